"""The lessons as stand-alone HTML that needs no network: every formula typeset as MathML when it is written.

nbconvert's lab template leaves the TeX of markdown cells (``$...$``, ``$$...$$``, ``\\begin{...}``) in the page
and loads MathJax and require.js from a CDN to typeset it in the browser, so an offline reader sees raw TeX.
:func:`lesson_exporter` converts each formula of a markdown cell to MathML at conversion time
(``latex2mathml``, pure Python; Chromium, Firefox and Safari render MathML Core natively) and drops the
``<script src=...>`` tags of MathJax, require.js and Mermaid. Maths is found by nbconvert's own markdown
parser, exactly where MathJax would have looked: code spans and fenced code blocks of a markdown cell, code
cells and outputs are left as they are (a ``$`` there is not maths).

A formula that latex2mathml cannot convert raises :class:`MathConversionError`, naming it, instead of
leaving TeX on the page: a new notebook formula that fails shows up in ``tests/test_lesson_html.py``, which
renders the committed notebooks. :func:`tex_to_mathml` first rewrites the few constructs that latex2mathml
handles badly (``aligned``, ``\\arg``, limits of ``\\sum``/``\\max``/``\\min`` in display maths), then fixes
what MathML Core ignores (named spaces, ``columnalign``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from ..errors import KalibError

MATHML_NS = "http://www.w3.org/1998/Math/MathML"

# The page's template: nbconvert's lab template without the CDN scripts (MathJax, require.js, Mermaid), a
# figure's alternative text from its output's metadata ("alt", written by kalib.report.notebook.show), and a
# little spacing for display maths.
TEMPLATE_NAME = "kalib_lesson.html.j2"
TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block data_png scoped %}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}"
{%- set alt = output | get_metadata('alt', 'image/png') -%}
{%- if alt is not none %} alt="{{ alt | escape_html }}"{% endif %}
{%- set width = output | get_metadata('width', 'image/png') -%}
{%- if width is not none %} width={{ width | escape_html }}{% endif %}
{%- set height = output | get_metadata('height', 'image/png') -%}
{%- if height is not none %} height={{ height | escape_html }}{% endif %}
{%- if output | get_metadata('needs_background', 'image/png') == 'light' %} class="jp-needs-light-background"{% endif %}
>
</div>
{%- endblock data_png %}
{% block extra_css %}
<style type="text/css">
math[display="block"] { margin: 0.6em 0; overflow-x: auto; overflow-y: hidden; }
</style>
{% endblock extra_css %}
"""


class MathConversionError(KalibError, ValueError):
    """A formula of a markdown cell that cannot be written as MathML (the message quotes it)."""


# Display maths puts the limits of these operators under and over them, as MathJax and LaTeX do.
_LIMIT_OPERATORS = re.compile(
    r"\\(sum|prod|coprod|bigcup|bigcap|bigoplus|bigotimes|bigvee|bigwedge|max|min|sup|inf|lim|limsup|liminf)"
    r"(?![A-Za-z])(\s*)(?=[_^])")
# MathML 3's named spaces, which MathML Core (and so Chromium) does not know; negative ones are dropped.
_NAMED_SPACES = {
    "veryverythinmathspace": "0.0556em", "verythinmathspace": "0.1111em", "thinmathspace": "0.1667em",
    "mediummathspace": "0.2222em", "thickmathspace": "0.2778em", "verythickmathspace": "0.3333em",
    "veryverythickmathspace": "0.3889em",
}
_SPACE = re.compile(r'<mspace width="(negative)?(\w+mathspace)"\s*/>')
_CELL = re.compile(r'<mtd columnalign="(left|right|center)"')
_UNKNOWN_COMMAND = re.compile(r"\\[A-Za-z]+")


def _rewrite(tex: str, display: bool) -> str:
    """TeX that latex2mathml converts as MathJax would typeset it."""
    tex = re.sub(r"\\(begin|end)\{aligned\}", r"\\\1{split}", tex)        # aligned: an mtable, as split
    tex = re.sub(r"\\(begin|end)\{(equation|displaymath)\*?\}", "", tex)   # the environment is the display
    tex = re.sub(r"\\arg(max|min)?(?![A-Za-z])",                          # not in latex2mathml's table
                 lambda m: r"\operatorname{arg}" + (f"\\{m.group(1)}" if m.group(1) else ""), tex)
    if display:
        tex = _LIMIT_OPERATORS.sub(r"\\\1\\limits\2", tex)
    return tex


def _fix_for_mathml_core(mathml: str) -> str:
    """MathML 3 idioms that MathML Core ignores, as attributes it reads."""
    def space(m):
        width = _NAMED_SPACES.get(m.group(2))
        return "" if m.group(1) or width is None else f'<mspace width="{width}"/>'

    def cell(m):
        side = m.group(1)
        pad = {"left": "padding-left: 0", "right": "padding-right: 0"}.get(side, "")
        return f'<mtd columnalign="{side}" style="text-align: {side}; {pad}"'

    mathml = _SPACE.sub(space, mathml)
    mathml = _CELL.sub(cell, mathml)
    # HTML puts <math> in the MathML namespace by itself; without the attribute, nbconvert's heading
    # anchors (ElementTree) keep the tag as ``math`` instead of writing ``ns0:math``.
    return mathml.replace(f' xmlns="{MATHML_NS}"', "", 1)


def tex_to_mathml(tex: str, display: bool = False) -> str:
    """One formula (without its ``$`` delimiters) as a ``<math>`` element; :class:`MathConversionError`
    if latex2mathml fails, writes malformed MathML, or leaves a TeX command it does not know."""
    from latex2mathml.converter import convert

    shown = ("$$%s$$" if display else "$%s$") % tex.strip()
    try:
        mathml = convert(_rewrite(tex.strip(), display), display="block" if display else "inline")
    except Exception as err:                                   # latex2mathml's own errors, IndexError, ...
        raise MathConversionError(f"latex2mathml cannot convert {shown}: {type(err).__name__}: {err}") from err
    try:
        tree = ET.fromstring(mathml)
    except ET.ParseError as err:
        raise MathConversionError(f"latex2mathml writes malformed MathML for {shown}: {err}") from err
    for node in tree.iter():
        if node.tag.endswith("merror"):
            raise MathConversionError(f"latex2mathml writes an error for {shown}")
        unknown = _UNKNOWN_COMMAND.search(node.text or "")
        if unknown:
            raise MathConversionError(f"latex2mathml does not know {unknown.group(0)} in {shown}")
    return _fix_for_mathml_core(mathml)


def _math_renderer(base):
    """nbconvert's markdown renderer ``base`` (a class) with its maths written as MathML."""

    class MathMLRenderer(base):
        def block_math(self, body: str) -> str:
            return tex_to_mathml(body, display=True)

        def inline_math(self, body: str) -> str:
            return tex_to_mathml(body, display=False)

        def latex_environment(self, name: str, body: str) -> str:
            return tex_to_mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", display=True)

    return MathMLRenderer


def lesson_title(nb) -> str:
    """A lesson's page title: the text of its first markdown heading, formulas as plain text (``$f_n^k$`` ->
    ``f_n^k``), or "" when it has none."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.startswith("#"):
                text = re.sub(r"\\[a-zA-Z]+\{([^}]*)\}", r"\1", line.lstrip("#").strip())
                return " ".join(re.sub(r"\\[!,;]|[$\\]", "", text).split())
    return ""


def lesson_exporter():
    """An ``HTMLExporter`` (lab template) whose pages load nothing from the network and show every formula
    of a markdown cell as MathML."""
    from jinja2 import DictLoader, pass_context
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

    renderer_class = _math_renderer(IPythonRenderer)

    class LessonExporter(HTMLExporter):
        @pass_context
        def markdown2html(self, context, source):
            """Markdown cells with MathML; markdown outputs (``display(Markdown(...))``) as nbconvert
            renders them, since an output is not the lesson's maths."""
            cell = context.get("cell", {})
            if cell.get("cell_type") != "markdown":
                return super().markdown2html(context, source)
            path = context.get("resources", {}).get("metadata", {}).get("path", "")
            renderer = renderer_class(
                escape=False,
                attachments=cell.get("attachments", {}),
                embed_images=self.embed_images,
                path=path,
                anchor_link_text=self.anchor_link_text,
                exclude_anchor_links=self.exclude_anchor_links,
                **self.lexer_options,
            )
            return MarkdownWithMath(renderer=renderer).render(source)

    return LessonExporter(template_name="lab", template_file=TEMPLATE_NAME,
                          extra_loaders=[DictLoader({TEMPLATE_NAME: TEMPLATE})])
