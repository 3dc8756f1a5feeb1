"""The quantizer catalogue page is generated from the classes and must stay current."""
from pathlib import Path

from quantizers.zoo.catalog import catalog_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_quantizer_catalog_page_lists_every_predefined_quantizer_as_generated():
    page = (ROOT / "docs" / "quantizers.md").read_text()
    assert catalog_markdown() in page, "regenerate docs/quantizers.md with python -m quantizers.zoo.catalog"
