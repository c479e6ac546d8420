"""mrnn-jax: the multimodal recurrent neural network (m-RNN) of Mao et al. in JAX/Flax.

Quick start in a notebook (``notebooks/quickstart.ipynb`` has more)::

    from mrnn_jax import api
    model = api.load("runs/shapes")                   # best checkpoint of a run
    print(api.caption(model, ["image.png"], strategy="beam", beam_size=3, num_return=3))
"""

from mrnn_jax.captioner import Captioner, load
from mrnn_jax.errors import MrnnError
from mrnn_jax.model import MRNN, make_model

__version__ = "0.1.0"

__all__ = ["MRNN", "Captioner", "MrnnError", "load", "make_model", "__version__"]
