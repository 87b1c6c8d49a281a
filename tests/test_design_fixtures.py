"""The design's sections the tests compare the product with are kept in the repository
(tests/fixtures/design/section_<letter>.md, verbatim): the render tests never compare a constant with itself, and
they run where the design file is absent. This test catches drift: whenever the design file is there, each kept
section must still equal the design's text (when it is absent, it skips, saying where it looked)."""

from __future__ import annotations

import pytest

from helpers import DESIGN_FILES, design_blocks, design_file, design_section, design_text

SECTIONS = ["B", "C", "D", "F"]  # §B MINIO_VOLUMES, §C be_redis_master, §D be_rabbitmq, §F the eight pins


@pytest.mark.parametrize("letter", SECTIONS)
def test_the_kept_design_section_is_still_the_designs_text(letter):
    path = design_file()
    if path is None:
        pytest.skip(f"design-definitif.md is in none of {', '.join(map(str, DESIGN_FILES))} (set "
                    "KEYBUZZ_DESIGN_FILE): the kept sections cannot be compared with it here")
    assert design_text(letter) == design_section(path.read_text(encoding="utf-8"), letter)


def test_a_changed_design_is_noticed(tmp_path, monkeypatch):
    """The comparison above can fail: a design whose §D block names another port differs from the kept copy."""
    kept = "\n---\n\n".join(design_text(letter) for letter in SECTIONS)
    changed = tmp_path / "design.md"
    changed.write_text(kept.replace("10.0.0.128:5672", "10.0.0.128:5673"))
    monkeypatch.setenv("KEYBUZZ_DESIGN_FILE", str(changed))
    assert design_section(changed.read_text(), "C") == design_text("C")
    assert design_section(design_file().read_text(), "D") != design_text("D")


def test_the_kept_sections_hold_the_blocks_the_render_tests_use():
    assert [b.splitlines()[0] for b in design_blocks("C", "haproxy")] == [
        "backend be_redis_master", "server redis-master <IP_MASTER>:6379 check"]
    assert [b.splitlines()[0] for b in design_blocks("D", "haproxy")] == ["backend be_rabbitmq"]
    assert design_blocks("B", "bash")[0].startswith("MINIO_VOLUMES=")
    assert len(design_blocks("F", "yaml")[0].splitlines()) == 8
