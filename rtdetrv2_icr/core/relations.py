"""Relations between classes: ``[{child: plate, parent: vehicle}, ...]`` -> label ids, once.

The data pipeline (pairing annotations, checking links), the ICR penalty and the evaluator's
relational consistency all read relations through `resolve_relations`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

__all__ = ["resolve_relations", "parent_of_list"]


def resolve_relations(
    relations: Optional[Sequence[dict]],
    class_names: Optional[Sequence[str]],
    where: str = "relations",
) -> Dict[int, int]:
    """``[{child: name, parent: name}]`` -> ``{child label: parent label}``.

    Names are looked up in ``class_names`` (integer label ids are accepted as they are). A class
    cannot be its own parent, and a child class has at most one parent class.
    """
    names = list(class_names) if class_names is not None else None
    out: Dict[int, int] = {}

    def to_id(value, role: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if names is None:
            raise ValueError(
                f"{where}: relation {role} {value!r} is a class name but no "
                f"class_names are configured (top-level key class_names)"
            )
        if value not in names:
            raise ValueError(
                f"{where}: relation {role} {value!r} is not a class name (class_names: {names})"
            )
        return names.index(value)

    for rel in relations or []:
        if not isinstance(rel, dict) or set(rel) != {"child", "parent"}:
            raise ValueError(
                f"{where}: each relation must be {{child: NAME, parent: NAME}}, got {rel!r}"
            )
        child, parent = to_id(rel["child"], "child"), to_id(rel["parent"], "parent")
        if child == parent:
            raise ValueError(f"{where}: class {rel['child']!r} cannot be its own parent")
        if out.get(child, parent) != parent:
            raise ValueError(
                f"{where}: class {rel['child']!r} has two parent classes (a child "
                f"class has at most one parent class)"
            )
        out[child] = parent
    return out


def parent_of_list(relations: Dict[int, int], num_classes: int) -> List[int]:
    """``{child: parent}`` -> ``parent_of[label]``, -1 for labels that are nobody's child."""
    parent_of = [-1] * num_classes
    for child, parent in relations.items():
        parent_of[child] = parent
    return parent_of
