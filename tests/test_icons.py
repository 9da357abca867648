"""Icons that render everywhere: the app's sources hold no emoji, only Material Symbols bundled with Streamlit.

An emoji needs an emoji font in the browser (headless Chromium on Debian has none and draws a box); the
``:material/name:`` icons ship with Streamlit as a web font and load offline. Streamlit checks an icon's name
only when the element renders, so every name used here is checked against its list up front.
"""

import re
from pathlib import Path

import pytest
from streamlit.material_icon_names import ALL_MATERIAL_ICONS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([ROOT / "app.py", *(ROOT / "pages").glob("*.py"), *(ROOT / "studio").glob("*.py")])

# Pictographs and symbols with an emoji presentation, the emoji variation selector, keycap and joiner.
# Plain text symbols the app uses on purpose (→ × − ≈ ± ‖ · …) are outside these ranges.
EMOJI = re.compile(
    "["
    "\U0001F000-\U0001FAFF"   # pictographs, emoticons, transport, supplemental symbols, playing cards, flags
    "\u2300-\u23FF"           # ⌚ ⏩ ⏳ ⏹ …
    "\u2600-\u27BF"           # ☀ ⚠ ✅ ✂ ➡ …
    "\u2934\u2935"            # ⤴ ⤵
    "\u2B00-\u2BFF"           # ⬇ ⭐ ⬛ …
    "\u2194-\u2199\u21A9\u21AA"   # ↔ ↕ ↖ ↗ ↘ ↙ ↩ ↪
    "\u25AA\u25AB\u25B6\u25C0\u25FB-\u25FE"   # ▪ ▫ ▶ ◀ ◻ ◼ ◽ ◾
    "\u3030\u303D\u3297\u3299"
    "\uFE0F\u20E3\u200D"      # emoji presentation selector, keycap, zero-width joiner
    "]")
MATERIAL = re.compile(r":material/([a-z0-9_]+):")


def test_sources_found():
    names = {p.relative_to(ROOT).as_posix() for p in SOURCES}
    assert {"app.py", "pages/plan.py", "pages/compare.py", "studio/sidebar.py"} <= names, names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_emoji_in_app_sources(path):
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if EMOJI.search(line)]
    assert not found, ("emoji render as boxes without an emoji font; use icon=\":material/...:\":\n"
                       + "\n".join(found))


def test_the_emoji_pattern_catches_what_the_app_used_to_show():
    for old in ["🏠", "🧠", "📊", "🎚️", "🎯", "🏋️", "📈", "🔀", "📦", "⬇️", "▶️", "⏹️", "↪️", "⏳", "✅", "⚠️", "✂️"]:
        assert EMOJI.search(old), old
    assert not EMOJI.search("A → B · 3× smaller ± 0.1 ≈ ‖W−Ŵ‖/‖W‖ …")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_material_icon_names_exist(path):
    text = path.read_text(encoding="utf-8")
    unknown = sorted(set(MATERIAL.findall(text)) - ALL_MATERIAL_ICONS)
    assert not unknown, f"{path.relative_to(ROOT)}: not Material Symbols: {unknown}"
    for icon in re.findall(r'\bicon=f?"([^"]*)"', text):   # every literal icon= is a Material Symbol
        assert MATERIAL.fullmatch(icon), f"{path.relative_to(ROOT)}: icon={icon!r}"


def test_every_navigation_page_has_a_material_icon():
    app = (ROOT / "app.py").read_text(encoding="utf-8")
    pages = re.findall(r"st\.Page\(([^)]*)\)", app)
    assert len(pages) >= 9, pages
    for args in pages:
        assert re.search(r'icon=":material/[a-z0-9_]+:"', args), args
    # The favicon is an inline image: a Material Symbol favicon is an SVG fetched from fonts.gstatic.com.
    assert re.search(r"page_icon=FAVICON\b", app) and re.search(r'FAVICON = \(?"data:image/svg\+xml,', app)
