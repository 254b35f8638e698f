"""Typed configuration: what each command needs, validated where it is built.

Configuration flows one way: command line / TOML file -> these dataclasses -> components.
:class:`RunConfig` is the swarm-wide document the coordinator signs and every volunteer verifies;
the other classes are local to one process.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from crowdtrain.errors import RunConfigError, UsageError

RUN_CONFIG_VERSION = 1
LOOPBACK = "127.0.0.1"


def _require(condition: bool, name: str, message: str, error: type[Exception] = ValueError) -> None:
    if not condition:
        raise error(f"{name}: {message}")


@dataclass(kw_only=True)
class Timeouts:
    """Swarm-wide default timeouts (seconds), carried by the run configuration."""

    matchmaking_time: float = 3.0
    "How long a peer waits to gather an averaging group before starting all-reduce."
    averaging_timeout: float = 30.0
    "Give up an averaging round after this long and continue with local progress."
    load_state_timeout: float = 60.0
    "Give up downloading the current state from one donor after this long."
    request_timeout: float = 1.0
    "Timeout of one matchmaking request (must stay below matchmaking_time)."
    next_chunk_timeout: float = 10.0
    "During all-reduce, drop a peer whose next chunk takes longer than this."

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                     f"timeouts.{f.name}", f"must be a positive number of seconds, got {value!r}")
        _require(self.request_timeout < self.matchmaking_time, "timeouts.request_timeout",
                 "must be below matchmaking_time")


AGGREGATORS = ("mean", "centered_clip", "trimmed_mean")


@dataclass(kw_only=True)
class IntegrityConfig:
    """How peers screen and combine gradient contributions (:mod:`crowdtrain.averaging`), swarm-wide."""

    aggregator: str = "centered_clip"
    "mean (hivemind's weighted mean, no checks), centered_clip (BTARD) or trimmed_mean (coordinate-wise)."
    clip_multiplier: float = 1.5
    """CenteredClip radius tau = this x the median distance of the contributions to their coordinate-wise median.
    Above the spread of honest contributions (up to 1.5x the median in the recorded albert-tiny gradients), so that
    a clean round's aggregate is the weighted mean. At 1, half of the honest contributions were clipped in every
    round: the aggregate leaned away from the noisiest honest peers, whose check of it then failed, so they stepped
    on their own gradients for that share (peers drifted apart) and struck honest reducers."""
    clip_iterations: int = 5
    "CenteredClip fixed-point iterations."
    trim_fraction: float = 0.25
    "trimmed_mean drops this fraction of the values at each end of every coordinate."
    max_norm_ratio: float = 10.0
    "A contribution (or a returned aggregate) whose norm exceeds this x the median norm (own norm) is rejected."
    max_weight_ratio: float = 2.0
    "A contribution's averaging weight (claimed samples) counts at most this x the median weight."
    ban_after: int = 3
    "Rejections of one peer's contributions or aggregates after which it is banned for the run."
    max_peer_share: float = 0.5
    "Samples another peer's progress record may count towards one global batch (fraction of target_batch_size)."

    def __post_init__(self) -> None:
        _require(self.aggregator in AGGREGATORS, "integrity.aggregator", f"must be one of {', '.join(AGGREGATORS)}")
        for name, low in (("clip_multiplier", 0.0), ("max_norm_ratio", 1.0), ("max_weight_ratio", 1.0)):
            value = getattr(self, name)
            _require(isinstance(value, (int, float)) and math.isfinite(value) and value >= low and value > 0,
                     f"integrity.{name}", f"must be a finite number >= {low:g} (and > 0), got {value!r}")
        _require(isinstance(self.clip_iterations, int) and 1 <= self.clip_iterations <= 100,
                 "integrity.clip_iterations", "must be an integer in 1..100")
        _require(isinstance(self.trim_fraction, (int, float)) and 0.0 <= self.trim_fraction < 0.5,
                 "integrity.trim_fraction", "must be in [0, 0.5)")
        _require(isinstance(self.ban_after, int) and self.ban_after >= 1, "integrity.ban_after", "must be >= 1")
        _require(isinstance(self.max_peer_share, (int, float)) and 0.0 < self.max_peer_share <= 1.0,
                 "integrity.max_peer_share", "must be in (0, 1]")

    @property
    def robust(self) -> bool:
        return self.aggregator != "mean"


RUN_MODES = ("standard", "diloco")
DILOCO_COMPRESSIONS = ("none", "fp16", "8bit")
INNER_LR_SCALINGS = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}
"DiLoCo's inner learning rate: the exponent p of (micro-batch / target batch) that scales the recipe's rate."


@dataclass(kw_only=True)
class DiLoCoConfig:
    """Low-communication mode: local inner steps, then an outer Nesterov step on averaged deltas."""

    inner_steps: int = 100
    "H: a round closes when the swarm has made H inner steps per live peer on average (a target, not a barrier)."
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True
    compression: str = "none"
    "Wire format of the averaged deltas: none (fp32), fp16 or 8bit (hivemind Quantile8BitQuantization)."
    error_feedback: bool = False
    "Carry this peer's compression error into its next round's delta."
    round_time: float = 0.0
    "Seconds after which a round closes even below the step budget; 0: no time budget."
    overlap: bool = True
    "Average a round's deltas in the background during the next round's inner steps (outer step one round late)."
    inner_lr_scaling: str = "sqrt"
    """The recipe's learning rate is tuned for the run's global batch (``target_batch_size``), but an inner
    step takes one micro-batch: the inner rate is the recipe's × (micro-batch / target batch)^p, with p = ½
    for ``sqrt`` (the rule for adaptive optimizers, measured on albert-tiny's LAMB: benchmarks/sim_diloco.py),
    1 for ``linear`` (the usual rule for SGD), 0 for ``none``."""

    def __post_init__(self) -> None:
        _require(isinstance(self.inner_steps, int) and self.inner_steps > 0, "diloco.inner_steps",
                 "must be a positive integer")
        _require(self.outer_lr > 0, "diloco.outer_lr", "must be positive")
        _require(0 <= self.outer_momentum < 1, "diloco.outer_momentum", "must be in [0, 1)")
        _require(self.compression in DILOCO_COMPRESSIONS, "diloco.compression",
                 f"must be one of {', '.join(DILOCO_COMPRESSIONS)}, got {self.compression!r}")
        _require(self.round_time >= 0, "diloco.round_time", "must be >= 0")
        _require(isinstance(self.overlap, bool), "diloco.overlap", "must be true or false")
        _require(self.inner_lr_scaling in INNER_LR_SCALINGS, "diloco.inner_lr_scaling",
                 f"must be one of {', '.join(INNER_LR_SCALINGS)}, got {self.inner_lr_scaling!r}")

    def inner_lr_factor(self, batch_size: int, target_batch_size: int) -> float:
        """What the recipe's learning rate is multiplied by for inner steps of ``batch_size`` samples."""
        return (batch_size / target_batch_size) ** INNER_LR_SCALINGS[self.inner_lr_scaling]


@dataclass(kw_only=True)
class RunConfig:
    """The signed, versioned description of one collaborative run; identical on every peer."""

    run_id: str
    "Bound to the coordinator's key: ``run-`` + the first 16 hex digits of sha256(public key)."
    recipe: str
    hparams: dict[str, Any]
    dataset: dict[str, Any]
    assets_sha256: str
    "sha256 of the recipe's assets (the tokenizer for ALBERT); volunteers verify what they receive."
    assets_size: int
    assets_chunks: list[str]
    "Digests (first 16 hex digits of sha256) of the zlib-compressed asset chunks, in order."
    target_batch_size: int
    "Samples the whole swarm accumulates before one optimizer step (one global epoch)."
    max_epochs: int = 0
    "Volunteers stop cleanly when the run reaches this global epoch; 0 means no limit."
    private: bool = False
    "Only peers holding an invite signed by the coordinator may publish records or average (``crowdtrain invite``)."
    timeouts: Timeouts = field(default_factory=Timeouts)
    created_at: float = 0.0
    version: int = RUN_CONFIG_VERSION
    integrity: IntegrityConfig = field(default_factory=IntegrityConfig)
    "Contribution checks, robust aggregator and bans; absent in older configurations (defaults apply)."
    mode: str = "standard"
    "standard: one averaged optimizer step per global batch; diloco: see :class:`DiLoCoConfig` (epochs are rounds)."
    diloco: DiLoCoConfig = field(default_factory=DiLoCoConfig)
    overlap: bool = False
    """standard mode: average gradients and step the optimizer in the background while peers compute the next
    batch (hivemind's delayed optimizer step and gradient averaging; each step applies one epoch late); false:
    every global step waits for its round (see :mod:`crowdtrain.swarm.optimizer`). Off by default: in the WAN
    benchmark (2026-12-06) one of four volunteers that lagged the swarm ended the run with its own state."""
    average_state_every: int = 1
    """standard mode: average parameters with peers every this many global epochs (hivemind's
    ``average_state_every``). Complete gradient rounds leave their members' parameters equal to float rounding
    (measured 2026-12-06: sums of squares equal to 9-10 digits); parameter rounds re-align peers whose round
    failed. A parameter round moves the fp32 parameters (3.1 MB for albert-tiny) through every uplink, more than
    the gradient round on slow links (8-bit): every epoch it held a 5 Mbit/s swarm at about 10 s per epoch.
    Default 1 (hivemind's) until rarer parameter rounds have been measured in long runs."""

    def __post_init__(self) -> None:
        if isinstance(self.timeouts, Mapping):
            self.timeouts = Timeouts(**self.timeouts)
        if isinstance(self.integrity, Mapping):
            self.integrity = IntegrityConfig(**self.integrity)
        if isinstance(self.diloco, Mapping):
            self.diloco = DiLoCoConfig(**self.diloco)
        _require(self.mode in RUN_MODES, "mode", f"must be one of {', '.join(RUN_MODES)}, got {self.mode!r}")
        _require(self.version == RUN_CONFIG_VERSION, "version",
                 f"unsupported run configuration version {self.version} (this crowdtrain reads {RUN_CONFIG_VERSION})")
        _require(isinstance(self.run_id, str) and self.run_id.startswith("run-"), "run_id", "must start with 'run-'")
        _require(isinstance(self.recipe, str) and self.recipe != "", "recipe", "must be a non-empty string")
        _require(isinstance(self.hparams, dict), "hparams", "must be a table")
        _require(isinstance(self.dataset, dict) and "kind" in self.dataset, "dataset", "must be a table with 'kind'")
        _require(isinstance(self.assets_sha256, str) and len(self.assets_sha256) == 64, "assets_sha256",
                 "must be a sha256 hex digest")
        _require(isinstance(self.assets_size, int) and 0 <= self.assets_size <= 16 * 2**20, "assets_size",
                 "must be between 0 and 16 MiB")
        _require(isinstance(self.assets_chunks, list) and len(self.assets_chunks) <= 1024 and all(
            isinstance(d, str) and len(d) == 16 and all(c in "0123456789abcdef" for c in d)
            for d in self.assets_chunks), "assets_chunks", "must be a list of at most 1024 16-hex-digit digests")
        _require(isinstance(self.target_batch_size, int) and self.target_batch_size > 0, "target_batch_size",
                 "must be a positive integer")
        _require(isinstance(self.max_epochs, int) and self.max_epochs >= 0, "max_epochs",
                 "must be a non-negative integer")
        _require(isinstance(self.private, bool), "private", "must be true or false")
        _require(isinstance(self.overlap, bool), "overlap", "must be true or false")
        _require(isinstance(self.average_state_every, int) and self.average_state_every >= 1, "average_state_every",
                 "must be a positive integer")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        """Parse and validate; raises :class:`RunConfigError` with a one-line reason."""
        if not isinstance(data, Mapping):
            raise RunConfigError("run configuration must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RunConfigError(f"run configuration has unknown fields: {', '.join(unknown)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise RunConfigError(f"invalid run configuration: {e}") from None


@dataclass(kw_only=True)
class NetworkConfig:
    """How this process joins the DHT."""

    initial_peers: list[str] = field(default_factory=list)
    "Full multiaddrs of peers already in the swarm (empty for the first peer)."
    host: str = "0.0.0.0"
    port: int = 0
    "TCP port to listen on; 0 picks a free one."
    announce_host: Optional[str] = None
    "Public IP to advertise instead of the listening address (for peers behind port forwarding)."
    announce_port: Optional[int] = None
    "Public TCP port to advertise when the router forwards another port to ``port``."
    nat_port_map: bool = True
    "Ask the home router for a port mapping (UPnP / NAT-PMP). Off for demo, tests and loopback."
    client_mode: bool = False
    "Do not accept incoming connections (for peers behind NAT); still contributes gradients."
    identity_path: Optional[Path] = None
    "Key file holding this peer's libp2p identity and record-signing key (created if missing)."
    startup_timeout: float = 30.0

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "port", f"must be in 0..65535, got {self.port}", UsageError)
        _require(self.startup_timeout > 0, "startup_timeout", "must be positive", UsageError)
        _require(self.announce_port is None or 1 <= self.announce_port <= 65535, "public_port",
                 f"must be in 1..65535, got {self.announce_port}", UsageError)
        _require(self.announce_port is None or self.announce_host is not None, "public_port",
                 "needs --public-ip as well", UsageError)
        _require(self.announce_host is None or self.port != 0 or self.announce_port is not None, "public_ip",
                 "needs --port (the port your router forwards to this machine) or --public-port", UsageError)
        if self.identity_path is not None:
            self.identity_path = Path(self.identity_path)

    @classmethod
    def loopback(cls, **overrides: Any) -> "NetworkConfig":
        """Network hygiene for demo, tests and benchmarks: bind 127.0.0.1, no port mapping."""
        return cls(host=LOOPBACK, nat_port_map=False, **overrides)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "crowdtrain"


@dataclass(kw_only=True)
class DashboardConfig:
    """The run's web dashboard, served by ``crowdtrain coordinator`` and ``crowdtrain dashboard``."""

    host: str = LOOPBACK
    "Interface to serve on; the default keeps the page on this machine."
    port: int = 0
    "TCP port; 0 picks a free one (the URL is printed at start)."
    store_path: Optional[Path] = None
    "SQLite file keeping history and departed peers across restarts (None: <run dir>/dashboard.sqlite)."
    run_dir: Optional[Path] = None
    "Run directory whose ``checkpoints/`` are listed and offered for download (None: none listed)."
    refresh_interval: float = 2.0
    "Seconds between reads of the swarm's records while someone views the page; each read is one point of history."
    idle_refresh_interval: float = 5.0
    """Seconds between reads while nobody has asked the dashboard for anything for 3 refresh intervals. The
    volunteers answer these reads: a read every 2 s was ~7 % of a DiLoCo swarm's DHT calls."""
    credit_half_life: float = 3600.0
    "Half-life in seconds of the leaderboard's recent average credit."

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "dashboard.port", f"must be in 0..65535, got {self.port}", UsageError)
        _require(self.refresh_interval > 0, "dashboard.refresh_interval", "must be positive", UsageError)
        _require(self.idle_refresh_interval >= self.refresh_interval, "dashboard.idle_refresh_interval",
                 "must be at least refresh_interval", UsageError)
        _require(self.credit_half_life > 0, "dashboard.credit_half_life", "must be positive", UsageError)
        for name in ("store_path", "run_dir"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))


@dataclass(kw_only=True)
class KeeperConfig:
    """The coordinator's own copy of the training state (:mod:`crowdtrain.swarm.keeper`)."""

    enabled: bool = True
    "Follow the swarm's state and serve it, so that the run survives every volunteer leaving."
    follow_interval: float = 2.0
    "At most one state download from the swarm per this many seconds, when the swarm is ahead."
    checkpoint_every: int = 10
    "Save a checkpoint every this many global epochs (0: never by epochs)."
    checkpoint_interval: float = 600.0
    "Save a checkpoint at least this often in seconds when the epoch advanced (0: never by time)."
    keep_checkpoints: int = 3
    "How many of the newest checkpoints to keep in RUN_DIR/checkpoints."
    resume: bool = False
    "Start from the newest valid checkpoint in RUN_DIR/checkpoints."
    eval_every: int = 5
    "Evaluate the swarm's state on held-out data every this many global epochs and publish it (0: never)."

    def __post_init__(self) -> None:
        _require(self.follow_interval > 0, "follow_interval", "must be positive", UsageError)
        _require(self.eval_every >= 0, "eval_every", "must be >= 0", UsageError)
        _require(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0", UsageError)
        _require(self.checkpoint_interval >= 0, "checkpoint_interval", "must be >= 0", UsageError)
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1", UsageError)
        _require(self.enabled or not self.resume, "resume", "needs the state keeper (drop --no-keep-state)",
                 UsageError)


@dataclass(kw_only=True)
class CoordinatorConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    recipe: str = "albert-tiny"
    target_batch_size: int = 256
    max_epochs: int = 0
    timeouts: Timeouts = field(default_factory=Timeouts)
    integrity: IntegrityConfig = field(default_factory=IntegrityConfig)
    mode: str = "standard"
    diloco: DiLoCoConfig = field(default_factory=DiLoCoConfig)
    overlap: bool = False
    "Standard mode: overlap averaging with compute (:attr:`RunConfig.overlap`)."
    average_state_every: int = 1
    "Standard mode: parameter averaging every this many epochs (:attr:`RunConfig.average_state_every`)."
    hparams: dict[str, Any] = field(default_factory=dict)
    "Overrides of the recipe's default hyper-parameters."
    dataset: Optional[dict[str, Any]] = None
    "Dataset spec; None uses the recipe's built-in default."
    run_dir: Optional[Path] = None
    "Where the run's configuration and assets are kept so a restart continues the same run."
    log_interval: float = 5.0
    republish_interval: float = 60.0
    """Seconds between re-stores of the run's records (their DHT lifetime is 300 s); a failed store is retried at the
    next status line. At 20 s the re-stores of the asset chunks were a quarter of a quiet swarm's DHT traffic."""
    dashboard: Optional[DashboardConfig] = None
    "Serve the run's dashboard (None: no dashboard)."
    private: bool = False
    "A private run: only volunteers with an invite (``crowdtrain invite``) take part."
    keeper: KeeperConfig = field(default_factory=KeeperConfig)

    def __post_init__(self) -> None:
        _require(self.target_batch_size > 0, "target_batch_size", "must be positive", UsageError)
        _require(self.max_epochs >= 0, "max_epochs", "must be >= 0", UsageError)
        _require(self.log_interval > 0, "log_interval", "must be positive", UsageError)
        _require(not (self.network.client_mode and self.keeper.enabled), "client_mode",
                 "the state keeper serves the run's state and needs incoming connections (or pass --no-keep-state)",
                 UsageError)
        _require(self.mode in RUN_MODES, "mode", f"must be one of {', '.join(RUN_MODES)}", UsageError)


@dataclass(kw_only=True)
class VolunteerConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    run_id: Optional[str] = None
    "Which run to join when the swarm hosts several; None joins the only one."
    name: str = ""
    "Volunteer name shown in status and on the leaderboard."
    batch_size: Optional[int] = None
    "Micro-batch size (samples per local step); None picks it by a short measured probe."
    throttle: float = 0.0
    "Sleep this multiple of each step's compute time: emulates slower hardware in demos."
    threads: Optional[int] = None
    "torch CPU threads; None uses all cores but one."
    max_hours: float = 0.0
    "Leave the run after this many hours of training; 0 means no limit."
    max_samples: int = 0
    "Leave the run after contributing this many samples; 0 means no limit."
    evaluate: bool = False
    "Evaluate the held-out metric at start and at exit."
    report_path: Optional[Path] = None
    "Write a JSON report of this volunteer's contribution at exit."
    export_path: Optional[Path] = None
    "Save the final model parameters (torch state dict) at exit."
    invite: Optional[str] = None
    "This volunteer's invite token to a private run."
    discovery_timeout: float = 30.0
    publish_interval: float = 2.0
    progress_interval: float = 5.0
    check_reachability: bool = True
    "Ask a peer to dial this one back at start; switch to client mode (with advice) if it cannot."

    def __post_init__(self) -> None:
        _require(self.batch_size is None or self.batch_size > 0, "batch_size", "must be positive", UsageError)
        _require(self.throttle >= 0, "throttle", "must be >= 0", UsageError)
        _require(self.threads is None or self.threads > 0, "threads", "must be positive", UsageError)
        _require(math.isfinite(self.max_hours) and self.max_hours >= 0, "max_hours", "must be >= 0", UsageError)
        _require(self.max_samples >= 0, "max_samples", "must be >= 0", UsageError)
        _require(len(self.name) <= 64, "name", "must be at most 64 characters", UsageError)


def load_toml(path: Path) -> dict[str, Any]:
    """Read a config file; raises :class:`UsageError` with a one-line reason."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {path} is not valid TOML: {e}") from None


@dataclass(frozen=True)
class VolunteerProfile:
    """A simulated volunteer of the demo: its micro-batch and how much slower than this CPU it is."""

    name: str
    batch_size: int
    throttle: float


DEFAULT_DEMO_PROFILES = (
    VolunteerProfile(name="fast", batch_size=16, throttle=0.0),
    VolunteerProfile(name="medium", batch_size=8, throttle=0.5),
    VolunteerProfile(name="slow", batch_size=4, throttle=2.0),
)


@dataclass(frozen=True)
class DemoDefaults:
    """What ``crowdtrain demo`` runs for one recipe unless its command line says otherwise."""

    duration: float = 120.0
    epochs: Optional[int] = None
    "Global epochs after which a standard-mode demo stops (the duration is then an upper bound); None: no such stop."
    profiles: tuple[VolunteerProfile, ...] = DEFAULT_DEMO_PROFILES
    hparams: Mapping[str, Any] = field(default_factory=dict)
    "Recipe hyper-parameters of the demo's run (over the recipe's defaults)."
    aggregator: Optional[str] = None
    "The run's gradient aggregator; None: the run's default (robust)."


DEMO_DEFAULTS_BY_RECIPE: dict[str, DemoDefaults] = {
    # SwAV computes its Sinkhorn codes and batch-norm statistics over each micro-batch: with 4-16
    # images (against 64 prototypes, whose equipartition needs at least as many) the swarm did not
    # learn, nor did one process fed the same micro-batches. A demo swarm makes one global step
    # every 2-5 s, of ~250 images: few, large steps, hence the longer run and lr 0.6 (swav-tiny's
    # 0.3 is tuned for 400 steps of 64). Robust aggregation struck honest peers (SwAV gradients of
    # different micro-batches disagree) and a third of the rounds failed: the demo, which has no
    # hostile peer, averages with the plain mean. Learning sets in after ~100 global steps of ~256
    # images (k-NN 0.27 / 0.35 / 0.45 after 100 / 150 / 175 in bench_swav_global_steps.py), which 300 s
    # gave or not depending on the machine's load: the demo stops at 175 global epochs instead, with
    # the duration as an upper bound. benchmarks/README.md, SwAV, "Why the demo swarm did not learn"
    # and "A demo as long as its global steps".
    "swav-tiny": DemoDefaults(duration=1200.0, epochs=175, profiles=(
        VolunteerProfile(name="fast", batch_size=64, throttle=0.0),
        VolunteerProfile(name="medium", batch_size=64, throttle=0.5),
        VolunteerProfile(name="slow", batch_size=64, throttle=2.0),
    ), hparams={"lr": 0.6}, aggregator="mean"),
}


def demo_defaults(recipe: str) -> DemoDefaults:
    """The demo's duration and volunteers for ``recipe`` (the common ones unless it needs its own)."""
    return DEMO_DEFAULTS_BY_RECIPE.get(recipe, DemoDefaults())


@dataclass(kw_only=True)
class DemoConfig:
    duration: float = 120.0
    "Seconds of training once the volunteers have started (an upper bound when ``epochs`` is set)."
    epochs: Optional[int] = None
    "Stop once the swarm has made this many global epochs; None: train for the whole duration."
    out_dir: Path = Path("demo-out")
    json_path: Optional[Path] = None
    plot_path: Optional[Path] = None
    recipe: str = "albert-tiny"
    target_batch_size: int = 128
    matchmaking_time: float = 2.0
    profiles: tuple[VolunteerProfile, ...] = DEFAULT_DEMO_PROFILES
    hparams: Mapping[str, Any] = field(default_factory=dict)
    "Recipe hyper-parameters of the run, over the recipe's defaults."
    aggregator: Optional[str] = None
    "The run's gradient aggregator; None: the coordinator's default."
    mode: str = "standard"
    inner_steps: int = 20
    "H of the demo's diloco mode (small, so that a short demo shows several outer rounds)."

    def __post_init__(self) -> None:
        _require(self.duration > 0, "duration", "must be positive", UsageError)
        _require(self.epochs is None or self.epochs > 0, "epochs", "must be positive", UsageError)
        _require(len(self.profiles) >= 1, "volunteers", "must be at least 1", UsageError)
        _require(self.target_batch_size > 0, "target_batch_size", "must be positive", UsageError)
        _require(self.mode in RUN_MODES, "mode", f"must be one of {', '.join(RUN_MODES)}", UsageError)
        _require(self.inner_steps > 0, "inner_steps", "must be positive", UsageError)
        self.out_dir = Path(self.out_dir)
