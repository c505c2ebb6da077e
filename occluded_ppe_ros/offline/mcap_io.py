"""MCAP recordings of ROS 2 messages: read raw records, write rclpy messages with `ros2msg` schemas.

Files written here are what `ros2 bag record -s mcap` writes: profile `ros2`, one schema per message
type with encoding `ros2msg` (the type's .msg text followed by every type it depends on, each after a
line of 80 '=' and a `MSG: pkg/Type` line, as rosbag2 and Foxglove expect), channels with
message encoding `cdr`, and message payloads serialised by rclpy (the exact bytes DDS carries).
So a recording can be replayed with `ros2 bag play`, opened in Foxglove, or decoded without ROS by
`mcap_ros2.decoder.DecoderFactory`.

rclpy is used only for (de)serialisation: no context, node or DDS traffic.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mcap.reader import make_reader
from mcap.well_known import MessageEncoding, SchemaEncoding
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter

ROS2MSG_SEPARATOR = '=' * 80
PRIMITIVE_TYPES = frozenset({
    'bool', 'byte', 'char', 'float32', 'float64', 'int8', 'uint8', 'int16', 'uint16', 'int32',
    'uint32', 'int64', 'uint64', 'string', 'wstring'})
# A field line: type (with optional array / bound suffix), name, optional default. Constants
# (`uint8 NAME=1`) have '=' in the second token and are skipped: they are always primitive.
_FIELD_RE = re.compile(r'^\s*(?P<type>[A-Za-z0-9_/]+)(?P<suffix>(<=\d+)?(\[[^\]]*\])?)\s+(?P<name>\S+)')


def share_prefixes() -> list[Path]:
    """Install prefixes searched for `share/<pkg>/msg/*.msg`: this interpreter's, then AMENT_PREFIX_PATH."""
    prefixes = [Path(sys.prefix)]
    for entry in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        if entry and Path(entry) not in prefixes:
            prefixes.append(Path(entry))
    return prefixes


def _split_type_name(type_name: str) -> tuple[str, str]:
    """'sensor_msgs/msg/Image' or 'sensor_msgs/Image' -> ('sensor_msgs', 'Image')."""
    parts = type_name.split('/')
    if len(parts) == 3 and parts[1] == 'msg':
        return parts[0], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f'expected a ROS 2 message type like "sensor_msgs/msg/Image", got {type_name!r}')


def find_msg_file(type_name: str, prefixes: Iterable[Path] | None = None) -> Path:
    """The installed .msg file of a message type.

    Args:
        type_name: 'pkg/msg/Name' or 'pkg/Name'.
        prefixes: install prefixes to search (default: `share_prefixes()`).

    Returns:
        <prefix>/share/<pkg>/msg/<Name>.msg (the first prefix that has it).
    """
    package, name = _split_type_name(type_name)
    searched = []
    for prefix in (share_prefixes() if prefixes is None else prefixes):
        candidate = Path(prefix) / 'share' / package / 'msg' / f'{name}.msg'
        if candidate.is_file():
            return candidate
        searched.append(str(candidate))
    raise FileNotFoundError(f'no .msg definition for {type_name}: looked for {", ".join(searched)}')


def _dependencies(package: str, text: str) -> list[str]:
    """Complex field types named in a .msg text, as 'pkg/Name', in order of first use."""
    found: list[str] = []
    for raw_line in text.splitlines():
        line = raw_line.split('#', 1)[0].strip()
        match = _FIELD_RE.match(line)
        if not match or '=' in match.group('name'):
            continue
        base = match.group('type')
        if base in PRIMITIVE_TYPES:
            continue
        if '/' in base:
            dep_package, dep_name = _split_type_name(base)
        else:
            dep_package, dep_name = package, base
        full = f'{dep_package}/{dep_name}'
        if full not in found:
            found.append(full)
    return found


def message_definition_text(type_name: str, prefixes: Iterable[Path] | None = None) -> str:
    """The self-contained `ros2msg` schema text of a type: its .msg text plus every dependency's.

    Dependencies are listed depth-first in order of first use, each once, as rosbag2 writes them:
    a line of 80 '=' characters, then `MSG: pkg/Name`, then that type's .msg text.

    Args:
        type_name: 'pkg/msg/Name' (or 'pkg/Name').
        prefixes: install prefixes to search for the .msg files (default: `share_prefixes()`).
    """
    prefixes = list(share_prefixes() if prefixes is None else prefixes)
    package, name = _split_type_name(type_name)
    root_text = find_msg_file(type_name, prefixes).read_text()
    ordered: list[str] = []
    texts: dict[str, str] = {}

    def visit(dep_package: str, text: str) -> None:
        for dependency in _dependencies(dep_package, text):
            if dependency in texts:
                continue
            dep_text = find_msg_file(dependency, prefixes).read_text()
            texts[dependency] = dep_text
            ordered.append(dependency)
            visit(dependency.split('/')[0], dep_text)

    texts[f'{package}/{name}'] = root_text
    visit(package, root_text)
    sections = [root_text.rstrip('\n')]
    for dependency in ordered:
        sections.append(f'{ROS2MSG_SEPARATOR}\nMSG: {dependency}\n{texts[dependency].rstrip(chr(10))}')
    return '\n'.join(sections) + '\n'


def message_type_name(message: Any) -> str:
    """'pkg/msg/Name' of an rclpy message instance (from its generated module: sensor_msgs.msg._image)."""
    module = type(message).__module__.split('.')
    if len(module) < 2 or module[1] != 'msg':
        raise TypeError(f'{type(message).__qualname__} from module {type(message).__module__} is not a '
                        f'generated ROS 2 message class')
    return f'{module[0]}/msg/{type(message).__name__}'


def message_class(type_name: str) -> type:
    """The rclpy message class of 'pkg/msg/Name' (imported from the generated Python package)."""
    package, name = _split_type_name(type_name)
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError) as error:
        raise ImportError(f'message type {type_name} is not importable ({error}); is its package built '
                          f'into this environment?') from error


@dataclass
class RecordedMessage:
    """One message record of an MCAP file, not yet deserialised.

    Attributes:
        topic: the channel's topic, e.g. '/camera/image_raw'.
        type_name: the schema name, e.g. 'sensor_msgs/msg/Image' ('' when the channel has no schema).
        log_time_ns: MCAP log time, nanoseconds since the Unix epoch (the recording machine's clock).
        publish_time_ns: MCAP publish time, nanoseconds.
        data: the serialised payload (CDR for ROS 2 recordings).
        message_encoding: the channel's message encoding, e.g. 'cdr'.
    """

    topic: str
    type_name: str
    log_time_ns: int
    publish_time_ns: int
    data: bytes
    message_encoding: str

    @property
    def where(self) -> str:
        """'topic @ log time' for messages that name a record (e.g. in a 'skipped corrupt message' line)."""
        return f'{self.topic} @ log time {self.log_time_ns} ns'


def channel_types(path: str | Path) -> dict[str, str]:
    """Map topic -> schema name of every channel in an MCAP file (from its summary, or a full scan)."""
    with open(path, 'rb') as stream:
        reader = make_reader(stream)
        summary = reader.get_summary()
        if summary is not None and summary.channels:
            return {channel.topic: (summary.schemas[channel.schema_id].name
                                    if channel.schema_id in summary.schemas else '')
                    for channel in summary.channels.values()}
        types: dict[str, str] = {}
        for schema, channel, _ in reader.iter_messages():
            types.setdefault(channel.topic, schema.name if schema is not None else '')
        return types


def iter_recorded_messages(path: str | Path,
                           topics: Iterable[str] | None = None) -> Iterator[RecordedMessage]:
    """Every message of an MCAP file in log-time order, optionally only on some topics."""
    with open(path, 'rb') as stream:
        reader = make_reader(stream)
        wanted = None if topics is None else list(topics)
        for schema, channel, message in reader.iter_messages(topics=wanted, log_time_order=True):
            yield RecordedMessage(topic=channel.topic, type_name=schema.name if schema is not None else '',
                                  log_time_ns=message.log_time, publish_time_ns=message.publish_time,
                                  data=message.data, message_encoding=channel.message_encoding)


def deserialize(record: RecordedMessage) -> Any:
    """A record's payload as an rclpy message object.

    Raises:
        ValueError: the channel is not CDR-encoded ROS 2, or the payload does not decode as its type
            (the message names the topic and log time).
    """
    if record.message_encoding != MessageEncoding.CDR:
        raise ValueError(f'{record.where}: message encoding {record.message_encoding!r} is not ROS 2 CDR')
    from rclpy.serialization import deserialize_message
    try:
        return deserialize_message(record.data, message_class(record.type_name))
    except Exception as error:  # rclpy raises its own RMWError for a truncated or malformed payload
        raise ValueError(f'{record.where}: payload of {len(record.data)} bytes does not decode as '
                         f'{record.type_name} ({error})') from error


class Ros2McapWriter:
    """Writes rclpy messages to an MCAP file as rosbag2 does (ros2msg schemas, CDR payloads).

    Use as a context manager, or call `close()`; the file is only valid once closed.
    """

    def __init__(self, path: str | Path, compression: CompressionType = CompressionType.ZSTD) -> None:
        """Create `path` and write the MCAP header (profile ros2)."""
        self.path = Path(path)
        self._stream: BinaryIO = open(self.path, 'wb')
        self._writer = McapWriter(self._stream, compression=compression)
        self._writer.start(profile='ros2', library='occluded_ppe_ros')
        self._schema_ids: dict[str, int] = {}
        self._channel_ids: dict[str, int] = {}
        self._channel_types: dict[str, str] = {}
        self._sequence: dict[str, int] = {}
        self.message_count = 0

    def schema_id(self, type_name: str) -> int:
        """The schema record id of a type, registering it (with its full definition) on first use."""
        if type_name not in self._schema_ids:
            self._schema_ids[type_name] = self._writer.register_schema(
                name=type_name, encoding=SchemaEncoding.ROS2,
                data=message_definition_text(type_name).encode())
        return self._schema_ids[type_name]

    def write(self, topic: str, message: Any, log_time_ns: int, publish_time_ns: int | None = None) -> None:
        """Serialise and append one message.

        Args:
            topic: e.g. '/ppe/detections'; one type per topic.
            message: an rclpy message instance.
            log_time_ns: record time, nanoseconds since the Unix epoch.
            publish_time_ns: publish time, nanoseconds (default: log_time_ns).
        """
        from rclpy.serialization import serialize_message
        type_name = message_type_name(message)
        if topic not in self._channel_ids:
            self._channel_ids[topic] = self._writer.register_channel(
                topic=topic, message_encoding=MessageEncoding.CDR, schema_id=self.schema_id(type_name))
            self._channel_types[topic] = type_name
            self._sequence[topic] = 0
        elif self._channel_types[topic] != type_name:
            raise TypeError(f'topic {topic} carries {self._channel_types[topic]}; cannot write a {type_name}')
        publish_time = log_time_ns if publish_time_ns is None else publish_time_ns
        self._writer.add_message(channel_id=self._channel_ids[topic], log_time=int(log_time_ns),
                                 publish_time=int(publish_time), sequence=self._sequence[topic],
                                 data=serialize_message(message))
        self._sequence[topic] += 1
        self.message_count += 1

    def write_raw(self, record: RecordedMessage) -> None:
        """Copy a record unchanged (same topic, type, times, payload) from another ROS 2 MCAP file."""
        if record.topic not in self._channel_ids:
            self._channel_ids[record.topic] = self._writer.register_channel(
                topic=record.topic, message_encoding=record.message_encoding,
                schema_id=self.schema_id(record.type_name))
            self._channel_types[record.topic] = record.type_name
            self._sequence[record.topic] = 0
        self._writer.add_message(channel_id=self._channel_ids[record.topic], log_time=record.log_time_ns,
                                 publish_time=record.publish_time_ns, sequence=self._sequence[record.topic],
                                 data=record.data)
        self._sequence[record.topic] += 1
        self.message_count += 1

    def close(self) -> None:
        """Write the summary and close the file (idempotent)."""
        if not self._stream.closed:
            self._writer.finish()
            self._stream.close()

    def __enter__(self) -> Ros2McapWriter:
        """Return the writer itself."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the file (also on an exception, so that what was written stays readable)."""
        self.close()
