"""Write the API reference (Markdown) from the comments in protos/.

Compiles protos/ with grpc_tools.protoc into a descriptor set with source info, then writes
every service (RPCs with request, response and comment), message (fields with type, number
and comment) and enum (values) of the `loyalty.*` packages, in file and declaration order.

Usage: python scripts/api_reference.py [--protos DIR] [OUT]   (default OUT: docs/reference.md)
       python scripts/api_reference.py --check                (exit 1 if OUT is stale)
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "reference.md"
PACKAGE_PREFIX = "loyalty."

# Field numbers in descriptor.proto, for SourceCodeInfo location paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE = 2
SERVICE_METHOD = 2

FDP = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    FDP.TYPE_DOUBLE: "double",
    FDP.TYPE_FLOAT: "float",
    FDP.TYPE_INT64: "int64",
    FDP.TYPE_UINT64: "uint64",
    FDP.TYPE_INT32: "int32",
    FDP.TYPE_FIXED64: "fixed64",
    FDP.TYPE_FIXED32: "fixed32",
    FDP.TYPE_BOOL: "bool",
    FDP.TYPE_STRING: "string",
    FDP.TYPE_BYTES: "bytes",
    FDP.TYPE_UINT32: "uint32",
    FDP.TYPE_SFIXED32: "sfixed32",
    FDP.TYPE_SFIXED64: "sfixed64",
    FDP.TYPE_SINT32: "sint32",
    FDP.TYPE_SINT64: "sint64",
}


def compile_protos(proto_root: Path) -> descriptor_pb2.FileDescriptorSet:
    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "descriptors.pb"
        code = protoc.main(
            [
                "protoc",
                f"-I{proto_root}",
                f"-I{well_known}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                *protos,
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def anchor(kind: str, full_name: str) -> str:
    """An HTML id: "message-wallet" for loyalty.v1.Wallet (other packages keep their name)."""
    return f"{kind}-{full_name.removeprefix(PACKAGE_PREFIX + 'v1.').replace('.', '-').lower()}"


def escape_html(text: str) -> str:
    """`<name>` outside code spans would be read as an HTML tag and vanish."""
    parts = text.split("`")
    parts[::2] = [re.sub(r"<(?=[A-Za-z/!])", "&lt;", part) for part in parts[::2]]
    return "`".join(parts)


def one_line(text: str) -> str:
    """A comment as one Markdown table cell."""
    return escape_html(" ".join(text.split()).replace("|", "\\|"))


def paragraph(text: str) -> str:
    """A comment as Markdown text: lines joined, blank lines kept as paragraph breaks."""
    blocks = [" ".join(block.split()) for block in text.strip().split("\n\n")]
    return escape_html("\n\n".join(block for block in blocks if block))


class Reference:
    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self.files = files
        self.comments: dict[tuple[str, tuple[int, ...]], str] = {}
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: set[str] = set()
        for file in files:
            for location in file.source_code_info.location:
                text = location.leading_comments or location.trailing_comments
                if text:
                    self.comments[(file.name, tuple(location.path))] = text
            for name, message, _ in self.walk_messages(file):
                self.messages[name] = message
            for name, _, _ in self.walk_enums(file):
                self.enums.add(name)

    def comment(self, file: descriptor_pb2.FileDescriptorProto, path: tuple[int, ...]) -> str:
        return self.comments.get((file.name, path), "")

    def walk_messages(
        self, file: descriptor_pb2.FileDescriptorProto
    ) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto, tuple[int, ...]]]:
        def walk(
            prefix: str, messages: list[descriptor_pb2.DescriptorProto], path: tuple[int, ...]
        ) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto, tuple[int, ...]]]:
            for i, message in enumerate(messages):
                name = f"{prefix}.{message.name}"
                here = (*path, i)
                yield name, message, here
                yield from walk(name, list(message.nested_type), (*here, MESSAGE_NESTED))

        yield from walk(file.package, list(file.message_type), (FILE_MESSAGE,))

    def walk_enums(
        self, file: descriptor_pb2.FileDescriptorProto
    ) -> Iterator[tuple[str, descriptor_pb2.EnumDescriptorProto, tuple[int, ...]]]:
        for i, enum in enumerate(file.enum_type):
            yield f"{file.package}.{enum.name}", enum, (FILE_ENUM, i)
        for name, message, path in self.walk_messages(file):
            for i, enum in enumerate(message.enum_type):
                yield f"{name}.{enum.name}", enum, (*path, MESSAGE_ENUM, i)

    def type_ref(self, type_name: str) -> str:
        """A message or enum type as a link when it is documented here."""
        name = type_name.lstrip(".")
        if name.startswith(PACKAGE_PREFIX):
            kind = "enum" if name in self.enums else "message"
            return f"[{name.removeprefix(PACKAGE_PREFIX + 'v1.')}](#{anchor(kind, name)})"
        return f"`{name}`"

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM):
            entry = self.messages.get(field.type_name.lstrip("."))
            if entry is not None and entry.options.map_entry:
                key, value = entry.field
                return f"map of {self.field_type(key)} to {self.field_type(value)}"
            base = self.type_ref(field.type_name)
        else:
            base = f"`{SCALARS[field.type]}`"
        if field.label == FDP.LABEL_REPEATED:
            return f"repeated {base}"
        return base

    def render(self) -> str:
        out = [
            "# API reference",
            "",
            "<!-- Generated from the comments in protos/ by `make reference`"
            " (scripts/api_reference.py). Do not edit: change the .proto comments and"
            " regenerate; `make check-reference` fails when this file is stale. -->",
            "",
            "Package `loyalty.v1`. Conventions shared by every RPC (request ids and idempotency,"
            " paging, errors and their reasons, limits) are in [api.md](api.md). Amounts are"
            " int64 minor units of the asset named beside them; in proto3 JSON they are strings.",
            "",
            "Files: " + ", ".join(f"`{f.name}`" for f in self.files),
            "",
            "## Services",
            "",
        ]
        for file in self.files:
            for s, service in enumerate(file.service):
                full = f"{file.package}.{service.name}"
                out += [f'<a id="{anchor("service", full)}"></a>', "", f"### {service.name}", ""]
                text = self.comment(file, (FILE_SERVICE, s))
                if text:
                    out += [paragraph(text), ""]
                out += ["| RPC | request | response | description |", "|---|---|---|---|"]
                for m, method in enumerate(service.method):
                    request = self.type_ref(method.input_type)
                    response = self.type_ref(method.output_type)
                    if method.client_streaming:
                        request = f"stream {request}"
                    if method.server_streaming:
                        response = f"stream {response}"
                    text = self.comment(file, (FILE_SERVICE, s, SERVICE_METHOD, m))
                    out.append(f"| `{method.name}` | {request} | {response} | {one_line(text)} |")
                out.append("")
        out += ["## Messages", ""]
        for file in self.files:
            for name, message, path in self.walk_messages(file):
                if message.options.map_entry:
                    continue
                short = name.removeprefix(PACKAGE_PREFIX + "v1.")
                out += [f'<a id="{anchor("message", name)}"></a>', "", f"### {short}", ""]
                out.append(f"*{file.name}*")
                out.append("")
                text = self.comment(file, path)
                if text:
                    out += [paragraph(text), ""]
                if not message.field:
                    out += ["No fields.", ""]
                    continue
                out += ["| field | type | # | description |", "|---|---|---|---|"]
                for f, field in enumerate(message.field):
                    text = one_line(self.comment(file, (*path, MESSAGE_FIELD, f)))
                    if field.HasField("oneof_index") and not field.proto3_optional:
                        oneof = message.oneof_decl[field.oneof_index].name
                        text = f"(oneof `{oneof}`) {text}".rstrip()
                    out.append(
                        f"| `{field.name}` | {self.field_type(field)} | {field.number} | {text} |"
                    )
                out.append("")
        out += ["## Enums", ""]
        for file in self.files:
            for name, enum, path in self.walk_enums(file):
                short = name.removeprefix(PACKAGE_PREFIX + "v1.")
                out += [f'<a id="{anchor("enum", name)}"></a>', "", f"### {short}", ""]
                out.append(f"*{file.name}*")
                out.append("")
                text = self.comment(file, path)
                if text:
                    out += [paragraph(text), ""]
                out += ["| value | number | description |", "|---|---|---|"]
                for v, value in enumerate(enum.value):
                    text = one_line(self.comment(file, (*path, ENUM_VALUE, v)))
                    out.append(f"| `{value.name}` | {value.number} | {text} |")
                out.append("")
        return "\n".join(out).rstrip("\n") + "\n"


def build(proto_root: Path) -> str:
    descriptors = compile_protos(proto_root)
    files = [f for f in descriptors.file if f.package.startswith(PACKAGE_PREFIX)]
    return Reference(sorted(files, key=lambda f: f.name)).render()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--protos", type=Path, default=ROOT / "protos", help="proto root")
    parser.add_argument("--check", action="store_true", help="fail if OUT is not current")
    args = parser.parse_args()
    text = build(args.protos.resolve())
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current == text:
            print(f"{args.out} is current")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), "committed", "from protos", lineterm=""
        )
        print("\n".join(list(diff)[:40]))
        print(f"{args.out} is stale: run 'make reference' and commit", file=sys.stderr)
        return 1
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
