"""PET Studio engine: models, data, analysis, compression methods, recipes and honest sizes.

Plain Python + torch; never imports streamlit. Everything the app shows is computed here.
"""

from pet_core.errors import PetError

__version__ = "0.1.0"
__all__ = ["PetError", "__version__"]
