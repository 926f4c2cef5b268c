"""motiondata: sharded, streamable stores of latent-motion representations for robot learning."""

__version__ = "0.1.0"
FORMAT_VERSION = "1.0"
