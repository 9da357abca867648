"""Start the app: ``python -m studio.serve [streamlit options]`` (what ``make run`` does).

Streamlit runs a fresh server's first request in its legacy ``pages/`` mode (the page file
alone) until some run has called ``st.navigation``; a deep link opened first would lose the
navigation and layout. The flag is process-wide, so we clear it before the server starts.
"""

import sys
from pathlib import Path

from streamlit.web import cli

APP = Path(__file__).resolve().parents[1] / "app.py"


def main() -> int:
    try:
        from streamlit.runtime.pages_manager import PagesManager

        PagesManager.uses_pages_directory = False
    except ImportError:  # a Streamlit without the flag needs nothing
        pass
    sys.argv = ["streamlit", "run", str(APP), *sys.argv[1:]]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
