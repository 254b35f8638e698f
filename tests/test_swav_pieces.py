"""SwAV's pieces against their definitions: Sinkhorn-Knopp, swapped prediction, LARS, ResNets,
multi-crop, the queue, k-NN and the hard held-out digits."""
from __future__ import annotations

import math
import random

import pytest
import torch

from crowdtrain.trainers.lars import Lars
from crowdtrain.trainers.swav.batch_norm import with_fresh_batch_norm
from crowdtrain.trainers.swav.images import DigitImages, open_images
from crowdtrain.trainers.swav.knn import knn_accuracy
from crowdtrain.trainers.swav.model import FeatureQueue
from crowdtrain.trainers.swav.multicrop import CropSpec, MultiCrop
from crowdtrain.trainers.swav.objective import sinkhorn, swapped_prediction_loss
from crowdtrain.trainers.swav.resnet import RESNET18, RESNET50, ResNet, ResNetSpec


# --- Sinkhorn-Knopp and the swapped-prediction loss -----------------------------------------------


def test_sinkhorn_rows_and_columns_sum_to_their_marginals():
    scores = torch.nn.functional.normalize(torch.randn(48, 12, generator=torch.Generator().manual_seed(0)), dim=1)
    codes = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert codes.shape == (48, 12) and bool((codes >= 0).all())
    assert codes.sum(dim=1).tolist() == pytest.approx([1.0] * 48, abs=1e-5)  # each sample: one unit
    converged = sinkhorn(scores, epsilon=0.05, iterations=200)
    assert converged.sum(dim=0).tolist() == pytest.approx([48 / 12] * 12, rel=1e-3)  # equipartition
    assert converged.sum(dim=1).tolist() == pytest.approx([1.0] * 48, abs=1e-5)


def test_sinkhorn_spreads_identical_samples_over_the_prototypes():
    """With every sample preferring prototype 0, equipartition still gives each prototype B/K."""
    scores = torch.tensor([[0.9, 0.1, 0.0, -0.2]] * 8)
    codes = sinkhorn(scores, epsilon=0.05, iterations=100)
    assert codes.sum(dim=0).tolist() == pytest.approx([2.0] * 4, rel=1e-3)


def test_swapped_prediction_loss_on_a_toy_case():
    """Two views, one sample, two prototypes: the loss is the mean of the two cross-entropies
    -q0 . log softmax(z1 / t) and -q1 . log softmax(z0 / t), computed here by hand."""
    q0, q1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.25, 0.75]])
    z0, z1 = torch.tensor([[0.5, -0.5]]), torch.tensor([[0.2, 0.4]])
    t = 0.5
    # softmax([0.4, 0.8]) = [1, e^0.4] / (1 + e^0.4);  softmax([1, -1]) = [e^2, 1] / (e^2 + 1)
    ce_from_view1 = -(math.log(1 / (1 + math.exp(0.4))))
    ce_from_view0 = -(0.25 * math.log(math.exp(2) / (math.exp(2) + 1)) + 0.75 * math.log(1 / (math.exp(2) + 1)))
    loss = swapped_prediction_loss([q0, q1], [z0, z1], temperature=t)
    assert float(loss) == pytest.approx((ce_from_view1 + ce_from_view0) / 2, rel=1e-6)
    # a third (small) view is predicted from by both codes: 4 terms in all
    z2 = torch.tensor([[0.0, 0.0]])
    ce_uniform = math.log(2)
    loss3 = swapped_prediction_loss([q0, q1], [z0, z1, z2], temperature=t)
    assert float(loss3) == pytest.approx((ce_from_view1 + ce_from_view0 + 2 * ce_uniform) / 4, rel=1e-6)


def test_feature_queue_keeps_the_newest_embeddings():
    queue = FeatureQueue(views=2, length=5)
    queue.push(0, torch.full((3, 2), 1.0))
    assert queue.full(0) is None
    queue.push(0, torch.full((3, 2), 2.0))
    full = queue.full(0)
    assert full.shape == (5, 2) and full[:3].eq(2.0).all() and full[3:].eq(1.0).all()
    assert queue.full(1) is None


# --- LARS -----------------------------------------------------------------------------------------


def test_lars_updates_match_the_rule_by_hand():
    """w = [3, 4] (norm 5), g = [0.6, 0.8] (norm 1), wd = 0.01, trust 0.001:
    local_lr = 0.001 * 5 / (1 + 0.01 * 5) = 0.0047619; d = local_lr * (g + wd * w) = [0.003, 0.004]."""
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    bias = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = Lars([weight, bias], lr=1.0, momentum=0.9, weight_decay=0.01, trust_coefficient=0.001, eps=0.0)
    weight.grad, bias.grad = torch.tensor([[0.6, 0.8]]), torch.tensor([0.5, -0.5])
    optimizer.step()
    assert weight.tolist()[0] == pytest.approx([2.997, 3.996], abs=1e-6)
    assert bias.tolist() == pytest.approx([0.5, 2.5], abs=1e-6)  # a vector: plain momentum SGD, no decay
    # second step: w = [2.997, 3.996] (norm 4.995), same g: local_lr = 0.001 * 4.995 / (1 + 0.04995);
    # buf = 0.9 * [0.003, 0.004] + local_lr * (g + 0.01 * w)
    local_lr = 0.001 * 4.995 / (1 + 0.01 * 4.995)
    buf = [0.9 * 0.003 + local_lr * (0.6 + 0.02997), 0.9 * 0.004 + local_lr * (0.8 + 0.03996)]
    weight.grad = torch.tensor([[0.6, 0.8]])
    bias.grad = None
    optimizer.step()
    assert weight.tolist()[0] == pytest.approx([2.997 - buf[0], 3.996 - buf[1]], abs=1e-6)


def test_lars_rejects_bad_settings():
    with pytest.raises(ValueError, match="learning rate"):
        Lars([torch.nn.Parameter(torch.ones(2))], lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        Lars([torch.nn.Parameter(torch.ones(2))], momentum=1.0)


# --- backbones and multi-crop ---------------------------------------------------------------------


def test_resnets_have_the_papers_sizes():
    """torchvision's resnet18 / resnet50 have 11.69 M / 25.56 M parameters with a 1000-class fc
    (0.51 M / 2.05 M of them): 11.18 M / 23.51 M without it."""
    assert sum(p.numel() for p in ResNet(RESNET18, 3, small_input=False).parameters()) == 11_176_512
    resnet50 = ResNet(RESNET50, 3, small_input=False)
    assert sum(p.numel() for p in resnet50.parameters()) == 23_508_032
    assert resnet50.out_features == 2048
    tiny = ResNet(ResNetSpec("basic", (1, 1), (8, 16)), 1, small_input=True)
    assert tiny(torch.zeros(3, 1, 20, 20)).shape == (3, 16)
    with pytest.raises(ValueError, match="unknown ResNet block"):
        ResNetSpec("dense", (1,), (8,))


def test_multicrop_makes_two_large_and_several_small_views():
    crops = MultiCrop(large=CropSpec(2, 24, (0.5, 1.0)), small=CropSpec(3, 10, (0.1, 0.3)), flip=True)
    images = torch.rand(5, 3, 32, 32)
    views = crops.views(images, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(5, 3, 24, 24)] * 2 + [(5, 3, 10, 10)] * 3
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in views)
    assert not torch.equal(views[0], views[1])
    # the whole image at full scale, no jitter, grey (no random greying): the crop is the image
    grey = images[:, :1]
    whole = MultiCrop(large=CropSpec(2, 32, (1.0, 1.0)), small=CropSpec(0, 8, (0.1, 0.2)), flip=False, jitter=0.0,
                      aspect=(1.0, 1.0))
    assert torch.allclose(whole.crop(grey, 32, (1.0, 1.0), torch.Generator()), grey, atol=1e-5)
    with pytest.raises(ValueError, match="bad crop spec"):
        CropSpec(2, 24, (0.0, 1.0))


# --- evaluation data --------------------------------------------------------------------------------


def test_knn_accuracy_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    queries = torch.tensor([[1.0, 0.05], [0.1, 1.0]])
    assert knn_accuracy(bank, labels, queries, torch.tensor([0, 1]), k=1) == 1.0
    assert knn_accuracy(bank, labels, queries, torch.tensor([0, 0]), k=1) == 0.5


def test_hard_digits_defeat_raw_pixels_and_are_fixed_by_seed():
    digits = DigitImages(image_size=32)
    sets = digits.knn_sets()
    assert sets.queries.shape == (len(digits.heldout), 1, 32, 32) and sets.bank.shape[0] == len(digits.train)
    assert set(sets.query_labels.tolist()) == set(range(10))  # every class is held out
    raw = knn_accuracy(sets.bank, sets.bank_labels, sets.queries, sets.query_labels, k=10)
    clean = knn_accuracy(digits.train, digits.train_labels, digits.heldout, digits.heldout_labels, k=10)
    assert clean > 0.95 and raw < 0.70, (clean, raw)  # the same k-NN on the clean scans is near perfect
    assert torch.equal(digits.knn_sets().queries, sets.queries)


def test_clean_training_renderings_hold_one_digit_without_clutter():
    hard, clean = DigitImages(image_size=32, training="hard"), DigitImages(image_size=32)
    images = [next(source.stream(random.Random(0), torch.Generator().manual_seed(0))) for source in (hard, clean)]
    assert images[1].shape == (1, 32, 32) and 0 <= images[1].min() and images[1].max() <= 1
    border = torch.ones(32, 32, dtype=torch.bool)
    border[4:-4, 4:-4] = False
    assert images[1][0][border].mean() < 0.05  # the clean digit stays clear of the canvas edge
    assert torch.equal(clean.knn_sets().queries, hard.knn_sets().queries)  # evaluation is the hard set
    open_images({"kind": "digits", "training": "clean"}, 32)
    with pytest.raises(ValueError, match="'training' must be one of"):
        open_images({"kind": "digits", "training": "noisy"}, 32)


def test_crop_rotation_keeps_shapes_and_rotates():
    image = torch.zeros(1, 1, 16, 16)
    image[..., 2:4, :] = 1.0  # a horizontal bar
    still = MultiCrop(large=CropSpec(1, 16, (1.0, 1.0)), small=CropSpec(0, 8, (0.1, 0.2)), flip=False, jitter=0.0,
                      aspect=(1.0, 1.0))
    turned = MultiCrop(large=CropSpec(1, 16, (1.0, 1.0)), small=CropSpec(0, 8, (0.1, 0.2)), flip=False,
                       jitter=0.0, aspect=(1.0, 1.0), rotation=90.0)
    same = still.views(image, torch.Generator().manual_seed(0))[0]
    assert torch.allclose(same, image, atol=1e-5)
    rotated = turned.views(image.expand(8, -1, -1, -1).contiguous(), torch.Generator().manual_seed(0))[0]
    assert rotated.shape == (8, 1, 16, 16) and not torch.allclose(rotated, image.expand(8, -1, -1, -1), atol=0.1)


@pytest.mark.parametrize("spec, message", [
    ({"kind": "imagenet"}, "unknown image dataset kind"),
    ({"kind": "digits", "size": 8}, "unknown keys"),
    ({"kind": "image-folder", "path": "/nonexistent"}, "existing directory"),
])
def test_bad_image_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        open_images(spec, 32)


def test_image_folder_in_imagenet_layout(tmp_path):
    from PIL import Image

    for label, colour in (("cats", (200, 30, 30)), ("dogs", (30, 30, 200))):
        (tmp_path / label).mkdir()
        for index in range(30):
            Image.new("RGB", (40 + index, 30), colour).save(tmp_path / label / f"{index}.png")
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    images = open_images({"kind": "image-folder", "path": str(tmp_path)}, 16)
    assert len(images.files) == 60 and sorted(set(images.labels)) == [0, 1]
    sets = images.knn_sets()
    assert sets.bank.shape[1:] == (3, 16, 16) and len(sets.bank) + len(sets.queries) == 60 and len(sets.queries) > 0
    assert knn_accuracy(sets.bank, sets.bank_labels, sets.queries, sets.query_labels, k=5) == 1.0
    import itertools
    import random
    first = list(itertools.islice(images.stream(random.Random(0), torch.Generator()), 3))
    assert all(image.shape == (3, 16, 16) and 0 <= float(image.min()) <= float(image.max()) <= 1 for image in first)


def test_batch_norm_statistics_are_re_estimated_on_a_copy():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(2)

        def embed(self, x):
            return self.norm(x)

    model = Tiny().eval()
    views = [torch.tensor([[0.0, 2.0], [2.0, 4.0]]), torch.tensor([[4.0, 6.0], [6.0, 8.0]])]
    fresh = with_fresh_batch_norm(model, views)
    # the cumulative average of the two batches' means (1, 3) and (5, 7), not an exponential one from (0, 0)
    torch.testing.assert_close(fresh.norm.running_mean, torch.tensor([3.0, 5.0]))
    assert not fresh.training and fresh.norm.momentum == model.norm.momentum == 0.1
    torch.testing.assert_close(model.norm.running_mean, torch.zeros(2))  # the model itself is left as it was
    torch.testing.assert_close(model.norm.running_var, torch.ones(2))
