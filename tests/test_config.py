"""Config system: includes, merging, overrides, registry building and its error messages."""

import textwrap

import pytest

from rtdetrv2_icr.core import ConfigError, YAMLConfig, create, load_config, parse_cli, register


@register(force=True)
class _CfgTestLeaf:
    __share__ = ["num_classes"]

    def __init__(self, width=8, num_classes=80):
        self.width, self.num_classes = width, num_classes


@register(force=True)
class _CfgTestRoot:
    __inject__ = ["leaf", "other"]

    def __init__(self, leaf, other=None, depth=1):
        self.leaf, self.other, self.depth = leaf, other, depth


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_include_order_and_nested_merge(tmp_path):
    (tmp_path / "inc").mkdir()
    write(
        tmp_path / "inc" / "a.yml",
        """
        num_classes: 80
        _CfgTestLeaf: {width: 8}
        opt: {lr: 0.1, betas: [0.9, 0.99], nested: {x: 1, y: 2}}
    """,
    )
    write(
        tmp_path / "inc" / "b.yml",
        """
        __include__: ['a.yml']
        opt: {lr: 0.2, nested: {y: 3}}
    """,
    )
    top = write(
        tmp_path / "top.yml",
        """
        __include__: ['inc/b.yml']
        num_classes: 2
        opt: {betas: [0.5, 0.5]}
    """,
    )
    cfg = load_config(top)
    assert cfg["num_classes"] == 2
    assert cfg["opt"] == {"lr": 0.2, "betas": [0.5, 0.5], "nested": {"x": 1, "y": 3}}
    assert cfg["_CfgTestLeaf"] == {"width": 8}
    # every leaf remembers the file that set it last
    assert cfg["__sources__"]["opt.lr"].endswith("b.yml")
    assert cfg["__sources__"]["num_classes"].endswith("top.yml")
    assert cfg["__sources__"]["opt.nested.x"].endswith("a.yml")


def test_missing_include_names_file(tmp_path):
    top = write(tmp_path / "top.yml", "__include__: ['nope.yml']\n")
    with pytest.raises(ConfigError, match=r"top\.yml.*nope\.yml"):
        load_config(top)


def test_circular_include(tmp_path):
    write(tmp_path / "a.yml", "__include__: ['b.yml']\n")
    write(tmp_path / "b.yml", "__include__: ['a.yml']\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(str(tmp_path / "a.yml"))


def test_parse_cli_values_are_yaml():
    assert parse_cli(["a.b.c=3", "a.d=[1, 2]", "e=true", "f=hello", "a.b.g=1e-4"]) == {
        "a": {"b": {"c": 3, "g": 1e-4}, "d": [1, 2]},
        "e": True,
        "f": "hello",
    }
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_cli(["novalue"])


def test_build_with_inject_share_and_overrides(tmp_path):
    path = write(
        tmp_path / "m.yml",
        """
        num_classes: 5
        model: _CfgTestRoot
        _CfgTestRoot: {leaf: _CfgTestLeaf, other: {type: _CfgTestLeaf, width: 3}, depth: 2}
        _CfgTestLeaf: {width: 16}
    """,
    )
    cfg = YAMLConfig(path, _CfgTestLeaf={"width": 32}, num_classes=7)
    root = cfg.model
    assert root.depth == 2
    assert root.leaf.width == 32 and root.leaf.num_classes == 7  # shared + keyword override
    assert root.other.width == 3 and root.other.num_classes == 7  # inline {type: ...} spec
    assert cfg.source_of("_CfgTestLeaf.width") == "override"
    # the -u form merges the same way
    cfg2 = YAMLConfig(path, **parse_cli(["_CfgTestRoot.depth=9"]))
    assert cfg2.model.depth == 9


def test_unknown_key_error_names_section_and_file(tmp_path):
    path = write(
        tmp_path / "bad.yml",
        """
        model: _CfgTestRoot
        _CfgTestRoot: {leaf: _CfgTestLeaf}
        _CfgTestLeaf: {widht: 4}
    """,
    )
    with pytest.raises(
        ConfigError, match=r"unknown key 'widht' in section '_CfgTestLeaf'.*bad\.yml"
    ):
        YAMLConfig(path).model


def test_unknown_component_name(tmp_path):
    path = write(tmp_path / "bad.yml", "model: _CfgTestRoot\n_CfgTestRoot: {leaf: _CfgTestLeef}\n")
    with pytest.raises(ConfigError, match="unknown component '_CfgTestLeef'"):
        YAMLConfig(path).model


def test_missing_required_and_missing_type():
    with pytest.raises(ConfigError, match="missing required key"):
        create("_CfgTestRoot", {})
    with pytest.raises(ConfigError, match="needs a 'type'"):
        create({"width": 3}, {}, _path="x")
