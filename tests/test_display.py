"""rlhf_lab.display: model text is escaped wherever it is shown as HTML."""

from rlhf_lab.display import html_table


def test_html_table_escapes_model_text():
    out = html_table([{"completion": "<script>alert(1)</script> & <b>bold</b>", "gold": 0.5, "ended": True}])
    assert "<script>" not in out and "<b>bold" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in out
    assert "+0.50" in out and "yes" in out
