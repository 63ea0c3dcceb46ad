"""Configuration of the result caches: embedder, index, hit policy, store, accuracy.

Distances in every cache setting are root-mean-square per dimension of the
embedding (``sqrt(squared_l2 / dim)``), so one number means the same for a
16×16 and a 32×32 thumbnail. Indexes work in squared L2 internally.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from streamedge.confbase import Model, env_substituted


class DownscaleEmbedderConfig(Model):
    """A thumbnail of the frame, flattened: cheap and good for fixed cameras."""

    type: Literal["downscale"] = "downscale"
    size: int = Field(16, ge=2, le=128, description="Thumbnail side in pixels.")
    grayscale: bool = Field(False, description="Drop colour before flattening.")


class WindowEmbedderConfig(Model):
    """A window of readings, flattened, each field scaled by ``scale``."""

    type: Literal["window"] = "window"
    scale: dict[str, float] = Field(
        default_factory=dict,
        description="Divide a field by this before comparing (default 1).",
    )


class HistogramEmbedderConfig(Model):
    """A colour histogram of the frame: ignores where things are, only which colours.

    The vector is the square root of the normalised histogram, scaled so that the
    RMS distance is ``sqrt(2)`` times the Hellinger distance of the two
    histograms (0 identical, ``sqrt(2)`` disjoint), whatever the bin count.
    """

    type: Literal["histogram"] = "histogram"
    space: Literal["hsv", "bgr"] = Field(
        "hsv",
        description=(
            "hsv: hue x saturation bins plus a value histogram (less sensitive to "
            "lighting); bgr: a joint histogram of the three channels."
        ),
    )
    bins: int = Field(
        8, ge=2, le=32, description="Bins per channel (hue, saturation, value or B, G, R)."
    )
    width: int = Field(
        160,
        ge=16,
        le=1920,
        description="Frames are shrunk to this width first (the histogram barely changes).",
    )


class PHashEmbedderConfig(Model):
    """Perceptual hash (pHash): signs of the low-frequency DCT of a grey thumbnail.

    The frame is shrunk to ``hash_size x highfreq_factor`` pixels a side, its
    2-D DCT taken, and the top-left ``hash_size x hash_size`` coefficients
    (DC excluded) compared with their median: one bit each, as 0/1 floats. The
    RMS distance is then ``sqrt(hamming / bits)``: 0.25 is 4 of 64 bits, 0.35
    about 8.
    """

    type: Literal["phash"] = "phash"
    hash_size: int = Field(8, ge=4, le=32, description="Side of the kept DCT block (bits = side²).")
    highfreq_factor: int = Field(
        4, ge=2, le=8, description="The thumbnail is hash_size x this pixels a side."
    )


class PNetEmbedderConfig(Model):
    """Features of the real detector: MTCNN PNet's last hidden layer, pooled on a grid.

    The frame is shrunk to ``width`` pixels, PNet's 32-channel feature map
    averaged over a ``grid x grid`` layout of cells and flattened (one small
    PNet run). The vector is divided by its own RMS, so distances are relative
    (0.1 is a 10 % change of the feature pattern) and overall brightness
    matters little.
    """

    type: Literal["pnet"] = "pnet"
    width: int = Field(128, ge=24, le=640, description="Frames are shrunk to this width first.")
    grid: int = Field(4, ge=1, le=16, description="Pooling cells per side (dim = 32 x grid²).")
    model_path: str | None = Field(
        None, description="PNet ONNX file; none: the MTCNN PNet shipped with streamedge."
    )


EmbedderConfig = Annotated[
    DownscaleEmbedderConfig
    | WindowEmbedderConfig
    | HistogramEmbedderConfig
    | PHashEmbedderConfig
    | PNetEmbedderConfig,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- indexes


class NumpyIndexConfig(Model):
    """Exact search with numpy; the fastest single query up to about 10k entries."""

    type: Literal["numpy"] = "numpy"


class FaissFlatIndexConfig(Model):
    """Exact search with FAISS ``IndexFlatL2`` behind an id map."""

    type: Literal["faiss_flat"] = "faiss_flat"
    threads: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "OpenMP threads faiss may use (process-wide). 1 is fastest for single "
            "queries on a busy Pi: idle OpenMP workers spin and steal the core."
        ),
    )


class HnswIndexConfig(Model):
    """FAISS ``IndexHNSWFlat``: a navigable small-world graph, approximate.

    HNSW cannot delete, so removed ids become tombstones that searches skip;
    the graph is rebuilt from the live vectors when tombstones pile up.
    """

    type: Literal["hnsw"] = "hnsw"
    m: int = Field(32, ge=4, le=128, description="Graph degree M (links per node and level).")
    ef_construction: int = Field(
        64, ge=8, le=2048, description="Candidate list size while inserting (build quality)."
    )
    ef_search: int = Field(
        96,
        ge=1,
        le=4096,
        description=(
            "Candidate list size while searching; faiss's default of 16 gives recall@1 "
            "of only 0.3-0.85 on cache data, so this is set for recall (never below k)."
        ),
    )
    rebuild_fraction: float = Field(
        0.25,
        gt=0,
        le=4,
        description="Rebuild the graph when tombstones exceed this fraction of live entries.",
    )
    threads: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "OpenMP threads faiss may use (process-wide). 1 is fastest for single "
            "queries on a busy Pi: idle OpenMP workers spin and steal the core."
        ),
    )


class IvfIndexConfig(Model):
    """FAISS ``IndexIVFFlat``: k-means cells, only ``nprobe`` cells scanned per query.

    Exact (flat) until ``train_min`` entries exist, then trained once on the
    entries present; retrained when the cache has grown ``retrain_growth``
    times past the size it was trained at.
    """

    type: Literal["ivf"] = "ivf"
    nlist: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="Number of cells; none: about sqrt(n) at training time (≥ 39 points a cell).",
    )
    nprobe: int = Field(16, ge=1, le=65536, description="Cells scanned per query.")
    train_min: int = Field(
        2048, ge=64, description="Entries needed before training; until then search is exact."
    )
    train_iterations: int = Field(10, ge=1, le=100, description="k-means iterations.")
    retrain_growth: float = Field(
        4.0,
        ge=1.5,
        description="Retrain when live entries reach this multiple of the trained count.",
    )
    seed: int = Field(1234, description="k-means seed (reproducible cells).")
    threads: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "OpenMP threads faiss may use (process-wide). 1 is fastest for single "
            "queries on a busy Pi: idle OpenMP workers spin and steal the core."
        ),
    )


class LshIndexConfig(Model):
    """Random-projection (p-stable, Euclidean) LSH in numpy, fixed bucket width.

    ``tables`` hash tables, each keyed by ``projections`` quantised random
    projections ``floor((a·x + b) / w)``; candidates from the query's buckets
    are re-ranked by exact distance.
    """

    type: Literal["lsh"] = "lsh"
    tables: int = Field(8, ge=1, le=64, description="Number of hash tables (L).")
    projections: int = Field(
        6, ge=1, le=64, description="Quantised projections concatenated per table (K)."
    )
    width: float = Field(
        0.1,
        gt=0,
        description="Bucket width w in RMS-per-dimension units (scaled by sqrt(dim) inside).",
    )
    probes: int = Field(
        0, ge=0, le=256, description="Extra neighbouring buckets probed per query (multi-probe)."
    )
    seed: int = Field(0, description="Seed of the random projections.")


class AlshIndexConfig(Model):
    """A-LSH (FoggyCache): p-stable LSH whose bucket width follows data density.

    The width is a multiple of the measured median distance to the
    ``density_k``-th nearest neighbour, re-estimated as the cache fills,
    drains or churns; the number of projections and tables then follow from
    the p-stable collision probabilities over the measured distance
    distribution, for ``target_recall`` at the least expected work; a query in
    a sparse region probes neighbouring buckets until it has
    ``min_candidates`` candidates. See :mod:`streamedge.caches.alsh` for how
    this relates to the paper.
    """

    type: Literal["alsh"] = "alsh"
    density_k: int = Field(5, ge=1, le=64, description="k of the k-NN distance density estimate.")
    width_factor: float | None = Field(
        None,
        gt=0,
        le=64,
        description=(
            "Bucket width as a multiple of the median k-NN distance; none: the multiple "
            "(0.5 to 16) is chosen by the same cost model as K and L."
        ),
    )
    target_recall: float = Field(
        0.95,
        gt=0,
        lt=1,
        description=(
            "Estimated probability that a query's nearest entry shares one of its home "
            "buckets (before probing), used to choose projections and tables."
        ),
    )
    max_tables: int = Field(16, ge=1, le=64, description="Upper bound on tables L (memory).")
    max_projections: int = Field(
        24, ge=1, le=64, description="Upper bound on projections per table K."
    )
    min_candidates: int = Field(
        64, ge=1, description="Probe neighbouring buckets until this many candidates are found."
    )
    max_probes: int = Field(
        64, ge=0, le=1024, description="Cap on extra buckets probed per query (all tables)."
    )
    sample: int = Field(
        96, ge=8, le=4096, description="Entries sampled to estimate the distance distribution."
    )
    reestimate_growth: float = Field(
        1.5,
        gt=1,
        description=(
            "Re-estimate when the entry count changes by this factor, or after "
            "(factor − 1)·n insertions (churn at constant size)."
        ),
    )
    min_entries: int = Field(
        64, ge=2, description="Below this many entries search is exact (nothing to adapt to)."
    )
    seed: int = Field(0, description="Seed of projections and sampling.")


IndexConfig = Annotated[
    NumpyIndexConfig
    | FaissFlatIndexConfig
    | HnswIndexConfig
    | IvfIndexConfig
    | LshIndexConfig
    | AlshIndexConfig,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- policies


class ThresholdPolicyConfig(Model):
    """Reuse the nearest answer when its distance is below ``max_distance``.

    Distances are root-mean-square per dimension of the embedding, so one
    threshold means the same for a 16×16 and a 32×32 thumbnail.
    """

    type: Literal["threshold"] = "threshold"
    max_distance: float = Field(0.02, ge=0, description="Largest RMS distance reused.")


class HknnPolicyConfig(Model):
    """H-kNN (FoggyCache): reuse only when the nearest answers agree.

    The ``k`` nearest entries within ``max_distance`` vote (uniformly or
    weighted by inverse distance) for their answer, compared through the
    cache's ``answer_key``; the dominant answer is reused when its share of
    the votes is at least ``min_homogeneity`` and the nearest entry is within
    ``nearest_max_distance``.
    """

    type: Literal["hknn"] = "hknn"
    k: int = Field(5, ge=1, le=64, description="Neighbours fetched from the index.")
    max_distance: float = Field(
        0.05, ge=0, description="Neighbours farther than this (RMS) do not vote."
    )
    nearest_max_distance: float = Field(
        0.02, ge=0, description="The nearest voter must be at most this far (RMS)."
    )
    min_homogeneity: float = Field(
        0.8, ge=0, le=1, description="θ: smallest share of the votes for the dominant answer."
    )
    min_votes: int = Field(
        1, ge=1, description="Voters within max_distance needed to decide at all."
    )
    weighting: Literal["uniform", "inverse_distance"] = Field(
        "uniform", description="How votes are weighted."
    )

    @model_validator(mode="after")
    def _nearest_within_bound(self) -> HknnPolicyConfig:
        if self.nearest_max_distance > self.max_distance:
            msg = "nearest_max_distance must not exceed max_distance"
            raise ValueError(msg)
        if self.min_votes > self.k:
            msg = "min_votes must not exceed k"
            raise ValueError(msg)
        return self


PolicyConfig = Annotated[ThresholdPolicyConfig | HknnPolicyConfig, Field(discriminator="type")]


# --------------------------------------------------------------------------- store


class StoreConfig(Model):
    """Byte-capped storage of cached answers."""

    max_bytes: int = Field(
        64 * 2**20,
        ge=4096,
        description="Cap on vectors, answers, bookkeeping and index structures, in bytes.",
    )
    ttl_s: float = Field(3600.0, gt=0, description="Answers older than this are dropped.")
    eviction: Literal["lru", "lfu", "cost"] = Field(
        "cost",
        description=(
            "What to evict when full: lru (least recently used), lfu (least often reused, "
            "Cachier), cost (least inference time saved per byte, Potluck-style importance)."
        ),
    )
    max_origin_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description=(
            "Largest share of max_bytes that one origin may hold (a device or a stream, "
            "see quota_by; entries merged from a neighbour gateway count as that gateway)."
        ),
    )
    quota_by: Literal["device", "stream"] = Field(
        "device",
        description=(
            "What max_origin_share limits: each device (all its streams together) or "
            "each device/stream."
        ),
    )


class AccuracyConfig(Model):
    """The accuracy contract of reuse and the online threshold adjuster."""

    target: float = Field(
        0.98, gt=0.5, lt=1, description="Required agreement of reused answers with the model."
    )
    recheck_fraction: float = Field(
        0.02, ge=0, le=1, description="Share of hits the pipeline re-checks with the model."
    )
    max_concurrent_rechecks: int = Field(
        2,
        ge=1,
        le=64,
        description=(
            "Re-checks of this namespace running at once, after their hit was answered; "
            "a hit picked while this many run is not re-checked (counted as skipped), "
            "so re-checks never queue up behind a busy model nor hold many frames."
        ),
    )
    window: int = Field(200, ge=10, description="Re-check outcomes judged together.")
    min_samples: int = Field(
        30, ge=5, description="Re-checks needed before thresholds are tightened or loosened."
    )
    tighten_factor: float = Field(
        0.8, gt=0, lt=1, description="Multiply the distance thresholds by this when below target."
    )
    loosen_factor: float = Field(
        1.05, gt=1, le=2, description="Multiply them by this when well above target."
    )
    homogeneity_step: float = Field(
        0.05, ge=0, le=0.5, description="Raise θ by this when tightening (a fifth of it loosening)."
    )
    confidence_z: float = Field(
        1.645,
        gt=0,
        description="z of the one-sided Wilson bound (1.645: 95 %) used for 'well above'.",
    )
    enabled: bool = Field(True, description="Adjust thresholds online from re-check outcomes.")


class SnapshotConfig(Model):
    """Periodic snapshot of the cache to disk, restored at start."""

    enabled: bool = Field(True, description="Snapshot on a timer and at shutdown; restore at start")
    interval_s: float = Field(300.0, gt=0, description="Seconds between snapshots.")


class CacheConfig(Model):
    """One cache profile. A namespace is (model@version, embedder@version)."""

    name: str = Field("default", description="Name that applications refer to.")
    embedder: EmbedderConfig = Field(default_factory=DownscaleEmbedderConfig)
    index: IndexConfig = Field(default_factory=NumpyIndexConfig)
    policy: PolicyConfig = Field(default_factory=ThresholdPolicyConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    answer_key: str | None = Field(
        "auto",
        description=(
            "What makes two answers equal: a field ('label' for classifiers, 'count' for "
            "detectors, dotted for nested fields); 'auto': 'label' if the answer has one, "
            "else 'count', else the whole answer; none: the whole answer, canonicalised "
            "(float scores included, so re-checks rarely agree)."
        ),
    )
    accuracy: AccuracyConfig = Field(default_factory=AccuracyConfig)
    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig)
    share: bool = Field(
        True,
        description=(
            "Publish this namespace's answers to neighbour gateways and merge theirs "
            "(when 'sharing' is enabled); false keeps them on this gateway."
        ),
    )
    private: bool = Field(
        False,
        description=(
            "Privacy: reuse an answer only for the device that produced it (no reuse "
            "across devices) and never share it with neighbour gateways."
        ),
    )


class SharingConfig(Model):
    """Cache sharing between gateways over a (bridged) MQTT topic.

    Each answer an authoritative tier stores in a shared namespace is
    published, HMAC-authenticated, on ``<topic_prefix>/cache/<namespace>``;
    neighbours merge it into their cache. Bridge that topic between brokers.
    """

    enabled: bool = Field(False, description="Publish and merge shared cache entries.")
    topic_prefix: str = Field(
        "streamedge-share",
        min_length=1,
        description=(
            "Root of the sharing topics; the same on every gateway of the group, and "
            "what a broker bridge forwards (<topic_prefix>/cache/#)."
        ),
    )
    secret: SecretStr | None = Field(
        None,
        description=(
            "Shared HMAC-SHA256 key of the group (at least 16 characters); write "
            "'${STREAMEDGE_SHARE_SECRET}' to take it from the environment."
        ),
    )
    previous_secrets: list[SecretStr] = Field(
        default_factory=list,
        description=(
            "Older keys still accepted on receipt (never used to send), so a new secret can "
            "be rolled out gateway by gateway; '${NAME}' substitution as for secret."
        ),
    )
    max_skew_s: float = Field(
        60.0,
        gt=0,
        description=(
            "Entries stamped further than this from our wall clock are rejected as "
            "stale (replay window; keep the gateways' clocks in NTP sync)."
        ),
    )
    replay_memory: int = Field(
        10_000,
        ge=16,
        description="Message nonces remembered to reject exact replays within max_skew_s.",
    )
    bytes_per_s: float = Field(
        64 * 1024,
        gt=0,
        description="Token-bucket rate of published entries, in bytes per second.",
    )
    burst_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="Token-bucket depth: bytes that may go out at once after a quiet spell.",
    )
    max_message_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="Larger shared entries are neither sent nor accepted.",
    )
    qos: Literal[0, 1] = Field(0, description="QoS of published entries.")

    @field_validator("secret", mode="before")
    @classmethod
    def _secret_env(cls, value: object, info: ValidationInfo) -> object:
        # SecretStr cannot carry the EnvStr annotation, so substitute here.
        return env_substituted(value, info)

    @field_validator("previous_secrets", mode="before")
    @classmethod
    def _previous_env(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, list):
            return [env_substituted(v, info) for v in value]
        return value

    @model_validator(mode="after")
    def _secret_when_enabled(self) -> SharingConfig:
        if self.enabled:
            if self.secret is None:
                raise ValueError("sharing.secret is required when sharing is enabled")
            if len(self.secret.get_secret_value()) < 16:
                raise ValueError("sharing.secret must be at least 16 characters")
        if "+" in self.topic_prefix or "#" in self.topic_prefix:
            raise ValueError("sharing.topic_prefix must not contain MQTT wildcards")
        return self
