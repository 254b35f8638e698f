#!/usr/bin/env bash
# The one install step shared by CI (.ci/run) and the Docker images: crowdtrain and its dependencies
# into the current Python environment.
#
#   scripts/install.sh [EXTRAS]          e.g. `scripts/install.sh test` for the test dependencies
#
#   CROWDTRAIN_TORCH=preinstalled        keep the torch already installed (the CUDA image's)
#   CROWDTRAIN_TORCH_INDEX=URL           an extra index for torch (the CPU image: PyTorch's CPU wheels)
set -euo pipefail
cd "$(dirname "$0")/.."

pip_install() { python -m pip install --quiet --disable-pip-version-check "$@"; }

if [ "${CROWDTRAIN_TORCH:-pinned}" = preinstalled ]; then
  python -c "import torch; print(f'keeping torch {torch.__version__}')"
  grep -v '^torch' requirements-ci.txt > /tmp/crowdtrain-requirements.txt
  pip_install -r /tmp/crowdtrain-requirements.txt
else
  # torch: the exact CPU build pinned in requirements-ci.txt (a looser pin pulls a multi-GB CUDA build)
  pip_install -r requirements-ci.txt ${CROWDTRAIN_TORCH_INDEX:+--extra-index-url "$CROWDTRAIN_TORCH_INDEX"}
fi

extras="${1:-}"
pip_install -e ".${extras:+[$extras]}"
python -c "import crowdtrain, hivemind, torch; print(f'crowdtrain ready: torch {torch.__version__}, hivemind {hivemind.__version__}')"
