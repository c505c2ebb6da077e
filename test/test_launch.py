"""The launch file, parameter file and RViz config, checked without faking launch (launch has no wheels here).

What real launch_ros would do is checked by parsing: the launch file compiles, declares the documented
arguments, starts the installed executable as a LifecycleNode with the params file and remappings, and
references files that exist; ppe.yaml agrees with the node's parameter table and loads through rcl's
own parser (also in a namespace); ppe.rviz is valid YAML with the three displays on the node's topics.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

from occluded_ppe_ros.ros.parameters import (PARAMETERS, PARAMETERS_BY_NAME, load_parameter_file,
                                             validate_parameter)

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / 'launch' / 'ppe.launch.py'
PARAMS_FILE = REPO / 'config' / 'ppe.yaml'
RVIZ_FILE = REPO / 'config' / 'ppe.rviz'


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, 'id', getattr(node.func, 'attr', None)) == name]


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_launch_file_structure():
    source = LAUNCH_FILE.read_text()
    compile(source, str(LAUNCH_FILE), 'exec')
    tree = ast.parse(source)
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert 'generate_launch_description' in functions
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names if node.module in ('launch_ros.actions', 'launch.actions')}
    assert {'LifecycleNode', 'Node', 'DeclareLaunchArgument'} <= imported
    declared = [ast.literal_eval(call.args[0]) for call in _calls(tree, 'DeclareLaunchArgument')]
    assert declared == ['params_file', 'image_topic', 'camera_info_topic', 'namespace', 'use_rviz',
                        'rviz_fixed_frame']
    (node,) = _calls(tree, 'LifecycleNode')
    assert ast.unparse(_keyword(node, 'package')) == 'PACKAGE'
    assert ast.unparse(_keyword(node, 'executable')) == 'NODE_NAME'
    assert ast.unparse(_keyword(node, 'parameters')) == '[params_file]'
    for keyword in ('name', 'namespace', 'remappings'):
        assert _keyword(node, keyword) is not None, keyword
    constants = {target.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)
                 and isinstance(node.value, ast.Constant)}
    assert constants == {'PACKAGE': 'occluded_ppe_ros', 'NODE_NAME': 'ppe_node',
                         'DEFAULT_RVIZ_FIXED_FRAME': 'camera_optical_frame'}
    # The executable exists under that name in setup.py, and the referenced share files are installed.
    assert re.search(r"'ppe_node = occluded_ppe_ros\.ros\.node:main'", (REPO / 'setup.py').read_text())
    assert "share / 'config' / 'ppe.yaml'" in source and PARAMS_FILE.is_file()
    assert "'config', 'ppe.rviz'" in source and RVIZ_FILE.is_file()
    remapped = {ast.literal_eval(pair.elts[0]) for call in ast.walk(tree) if isinstance(call, ast.List)
                for pair in call.elts if isinstance(pair, ast.Tuple) and len(pair.elts) == 2}
    assert remapped == {'image', 'image/compressed', 'camera_info'}


def test_parameter_file_matches_the_table():
    document = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(document) == ['/**/ppe_node']
    values = document['/**/ppe_node']['ros__parameters']
    assert list(values) == [spec.name for spec in PARAMETERS]
    for spec in PARAMETERS:
        assert type(values[spec.name]) is type(spec.default), spec.name
        assert validate_parameter(spec.name, values[spec.name], configured=False) is None, spec.name
        assert validate_parameter(spec.name, spec.default, configured=False) is None, spec.name
    # Every key carries a comment on the line(s) just above it.
    lines = PARAMS_FILE.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r'^    (\w+):', line)
        if match:
            assert lines[index - 1].strip().startswith('#'), f'{match.group(1)} has no comment'
    assert load_parameter_file(PARAMS_FILE) == values


def test_validation_reasons():
    assert 'above the maximum 1.0' in validate_parameter('score_threshold', 1.5, configured=True)
    assert 'below the minimum' in validate_parameter('marker_depth_m', 0.0, configured=True)
    assert 'not one of' in validate_parameter('backend', 'tflite', configured=False)
    assert 'multiple of 32' in validate_parameter('input_height', 100, configured=False)
    assert 'read on configure' in validate_parameter('model_path', 'x.pt', configured=True)
    assert validate_parameter('model_path', 'x.pt', configured=False) is None
    assert validate_parameter('score_threshold', 0.25, configured=True) is None
    assert validate_parameter('use_sim_time', True, configured=True) is None
    assert set(PARAMETERS_BY_NAME) == {spec.name for spec in PARAMETERS}


@pytest.mark.ros
@pytest.mark.parametrize('namespace', ['/', '/front'])
def test_parameter_file_loads_through_rcl(namespace, tmp_path):
    """rcl's own YAML parser applies the file to ppe_node in the root namespace and in a namespace."""
    import rclpy
    from rclpy.context import Context

    from occluded_ppe_ros.ros.node import PPENode

    context = Context()
    rclpy.init(context=context, args=['ppe_node', '--ros-args', '-r', f'__ns:={namespace}',
                                      '--params-file', str(PARAMS_FILE), '-p', 'autostart:=false',
                                      '-p', 'score_threshold:=0.25'])
    try:
        node = PPENode(context=context)
        expected = load_parameter_file(PARAMS_FILE) | {'autostart': False, 'score_threshold': 0.25}
        for name, value in expected.items():
            assert node.get_parameter(name).value == value, name
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def _run_launch_file_with_recording_stubs(monkeypatch) -> list:
    """generate_launch_description() with launch / launch_ros / ament_index replaced by classes that record
    their arguments (neither launch nor launch_ros has wheels here): the entities it returns."""
    import runpy
    import types

    class Recorded:
        def __init__(self, *args, **kwargs) -> None:
            self.args, self.kwargs = args, kwargs

        def __eq__(self, other) -> bool:
            return type(self) is type(other) and (self.args, self.kwargs) == (other.args, other.kwargs)

        __hash__ = None

    stubs = {
        'launch': ['LaunchDescription'], 'launch.actions': ['DeclareLaunchArgument'],
        'launch.conditions': ['IfCondition'], 'launch.substitutions': ['LaunchConfiguration',
                                                                       'PathJoinSubstitution'],
        'launch_ros': [], 'launch_ros.actions': ['LifecycleNode', 'Node'],
    }
    classes = {}
    for module_name, names in stubs.items():
        module = types.ModuleType(module_name)
        for name in names:
            classes[name] = type(name, (Recorded,), {})
            setattr(module, name, classes[name])
        monkeypatch.setitem(sys.modules, module_name, module)
    packages = types.ModuleType('ament_index_python.packages')
    packages.get_package_share_directory = lambda package: f'/opt/ros/jazzy/share/{package}'
    monkeypatch.setitem(sys.modules, 'ament_index_python.packages', packages)
    description = runpy.run_path(str(LAUNCH_FILE))['generate_launch_description']()
    assert isinstance(description, classes['LaunchDescription'])
    return description.args[0], classes


def test_launch_passes_rviz_fixed_frame_to_rviz2(monkeypatch):
    """rviz_fixed_frame is declared (default: ppe.rviz's own frame) and reaches rviz2 as `-f <frame>` after
    `-d ppe.rviz` (rviz2 applies -f after loading the file), so markers in any camera's frame show."""
    entities, classes = _run_launch_file_with_recording_stubs(monkeypatch)
    declared = {e.args[0]: e.kwargs for e in entities if isinstance(e, classes['DeclareLaunchArgument'])}
    rviz_file_frame = yaml.safe_load(RVIZ_FILE.read_text())['Visualization Manager']['Global Options'][
        'Fixed Frame']
    assert declared['rviz_fixed_frame']['default_value'] == rviz_file_frame
    assert 'frame_id' in declared['rviz_fixed_frame']['description']
    (rviz,) = [e for e in entities if isinstance(e, classes['Node']) and e.kwargs['package'] == 'rviz2']
    arguments = rviz.kwargs['arguments']
    assert arguments[0] == '-d' and arguments[2] == '-f'
    assert arguments[1] == classes['PathJoinSubstitution'](['/opt/ros/jazzy/share/occluded_ppe_ros', 'config',
                                                            'ppe.rviz'])
    assert arguments[3] == classes['LaunchConfiguration']('rviz_fixed_frame')
    assert rviz.kwargs['condition'] == classes['IfCondition'](classes['LaunchConfiguration']('use_rviz'))
    # the README's launch section documents the argument
    assert 'rviz_fixed_frame:=' in (REPO / 'README.md').read_text()


def test_rviz_config_displays():
    config = yaml.safe_load(RVIZ_FILE.read_text())
    displays = {d['Class']: d for d in config['Visualization Manager']['Displays']}
    assert displays['rviz_default_plugins/Camera']['Topic']['Value'] == 'image'
    assert displays['rviz_default_plugins/Camera']['Image Rendering'] == 'background and overlay'
    assert displays['rviz_default_plugins/MarkerArray']['Topic']['Value'] == 'markers'
    assert displays['rviz_default_plugins/Image']['Topic']['Value'] == 'overlay'
    assert set(displays['rviz_default_plugins/MarkerArray']['Namespaces']) == {'ppe_joints', 'ppe_limbs'}
    assert config['Visualization Manager']['Global Options']['Fixed Frame']


def test_model_paths_resolve_against_the_package_share(tmp_path):
    from occluded_ppe_ros.ros.node import resolve_model_path

    absolute = tmp_path / 'model.pt'
    assert resolve_model_path(str(absolute)) == absolute
    # A relative path names a file under share/occluded_ppe_ros/ (or the source tree when not installed).
    resolved = resolve_model_path('config/ppe.yaml')
    assert resolved.is_absolute() and resolved.is_file() and resolved.parts[-2:] == ('config', 'ppe.yaml')
    missing = resolve_model_path('models/not_shipped.pt')
    assert missing.is_absolute() and missing.parts[-2:] == ('models', 'not_shipped.pt')
