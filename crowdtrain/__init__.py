"""crowdtrain: volunteer computing for deep learning on top of hivemind.

Public API: configuration objects, identities, recipes and the local swarm launcher; the command
line (``crowdtrain``) lives in :mod:`crowdtrain.cli`.
"""
from crowdtrain.config import CoordinatorConfig, NetworkConfig, RunConfig, Timeouts, VolunteerConfig
from crowdtrain.errors import CrowdtrainError, ExitCode
from crowdtrain.peers.identity import Identity

__version__ = "0.1.0"
__all__ = ["CoordinatorConfig", "CrowdtrainError", "ExitCode", "Identity", "NetworkConfig", "RunConfig",
           "Timeouts", "VolunteerConfig", "__version__"]
