from feedback_nlp.report import md_escape


def test_report_markdown_escapes_untrusted_text():
    out = md_escape("<script>alert(1)</script> [click](http://x) | **bold**\nnext")
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "\\[click\\]\\(http://x\\)" in out
    assert "\\|" in out and "\\*\\*bold\\*\\*" in out
    assert "\n" not in out
