"""The quantizer catalogue page is generated from the attribute schema and the classes and must
stay current."""
from pathlib import Path

from quantizers.zoo.catalog import attributes_markdown, catalog_markdown

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "regenerate the tables of docs/quantizers.md with python -m quantizers.zoo.catalog"


def test_quantizer_catalog_page_lists_every_predefined_quantizer_as_generated():
    page = (ROOT / "docs" / "quantizers.md").read_text()
    assert catalog_markdown() in page, REGENERATE


def test_quantizer_catalog_page_lists_every_declared_attribute_as_generated():
    page = (ROOT / "docs" / "quantizers.md").read_text()
    assert attributes_markdown() in page, REGENERATE
