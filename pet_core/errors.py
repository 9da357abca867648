"""The one exception type the engine raises for bad input."""


class PetError(ValueError):
    """Bad input from the user: a file, a recipe, a value out of range.

    The message is one line that names what is wrong; the CLI prints it and exits 2,
    the app shows it with ``st.error``.
    """
