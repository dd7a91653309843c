from .network import InteractiveKeypointNet

__all__ = ["InteractiveKeypointNet"]
