"""PET Studio: the Streamlit front end of the PET compression toolkit."""
