"""orion_virt: GPU pooling and virtualization — CUDA driver-API remoting to oriond."""

__version__ = "0.1.0"
