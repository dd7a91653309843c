"""One model and one inference thread for every session of a process.

The weights are read once and only read afterwards: each session keeps its own MRML scene,
logic and engine sessions (image features, clicks, history), and all of them run the
network through :attr:`SharedModel.inference_thread`, one model run at a time.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from ..mrml_logic import KeypointsMRMLLogic


class SharedModel:
    """The model of ``model_dir`` (None: the shipped one), loaded on first use."""

    def __init__(self, model_dir=None, device: str = "auto"):
        self.model_dir = model_dir
        self.device = device
        self.inference_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ik-inference")
        self._lock = threading.Lock()  # loaded by a preloading thread or the inference thread
        self._model = None
        self._predictor = None

    def model(self):
        with self._lock:
            if self._model is None:
                from ..model_folders import default_model_dir
                from ..model_io import load_model

                self._model = load_model(self.model_dir or default_model_dir(), device="cpu")
            return self._model

    def predictor(self):
        """The inference copy of the network (BN folded), made once."""
        model = self.model()
        with self._lock:
            if self._predictor is None:
                from ..inference import Predictor

                self._predictor = Predictor(model, self.device)
            return self._predictor

    def load(self):
        """Load the weights and build the inference copy now (so no session waits for it)."""
        self.predictor()

    def logic(self, scene) -> KeypointsMRMLLogic:
        """A logic of its own for a session's scene, running this model."""
        return SharedModelLogic(scene, self)

    def shutdown(self):
        self.inference_thread.shutdown(wait=False, cancel_futures=True)


class SharedModelLogic(KeypointsMRMLLogic):
    """A session's logic whose model and inference copy are the process's shared ones."""

    def __init__(self, scene, shared: SharedModel):
        super().__init__(scene=scene, model_folder=shared.model_dir, device=shared.device)
        self.shared = shared

    def model(self):
        return self.shared.model()

    def predictor(self):
        return self.shared.predictor()
