"""SwAV (Caron et al., 2020): self-supervised pretraining by swapping assignments between views.

- ``resnet.py``: ResNet backbones written here (torchvision does not import beside this torch).
- ``multicrop.py``: multi-crop augmentation on tensors (2 large + several small crops).
- ``objective.py``: Sinkhorn-Knopp assignment and the swapped-prediction loss.
- ``model.py``: backbone + projection head + prototypes, and the optional feature queue.
- ``images.py``: image data: scikit-learn's bundled digits (offline) and image folders.
- ``knn.py``: k-NN accuracy of frozen features.
- ``recipe.py``: the ``swav-tiny``, ``swav-resnet18`` and ``swav-resnet50`` recipes.
"""
