"""A tiny YAML writer for the configs the tests generate.

Block style only, scalars quoted when they could be misread. Written here so the suite does
not depend on PyYAML, and so the proxy's parser sees the plain layout its own example uses.
"""
import json
import re

_PLAIN = re.compile(r"^[A-Za-z0-9_./@+-][A-Za-z0-9_./:@+-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "~"}


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    # Plain when safe; otherwise a JSON string, which is a valid YAML double-quoted scalar.
    if _PLAIN.match(text) and text.lower() not in _RESERVED and not _looks_numeric(text):
        return text
    return json.dumps(text)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _lines(value, indent: int):
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if item is None:
                continue
            if isinstance(item, (dict, list)) and item:
                yield f"{pad}{key}:"
                yield from _lines(item, indent + 2)
            elif isinstance(item, list):
                yield f"{pad}{key}: []"
            elif isinstance(item, dict):
                yield f"{pad}{key}: {{}}"
            else:
                yield f"{pad}{key}: {_scalar(item)}"
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                # First key on the dash line, the rest aligned under it.
                sub = list(_lines(item, indent + 2))
                yield f"{pad}- {sub[0].lstrip()}"
                yield from sub[1:]
            elif isinstance(item, list):
                raise ValueError("nested lists are not needed by these configs")
            else:
                yield f"{pad}- {_scalar(item)}"
    else:
        yield f"{pad}{_scalar(value)}"


def dump(value: dict) -> str:
    return "\n".join(_lines(value, 0)) + "\n"
