"""ament_python build of occluded_ppe_ros (and its training package, imported as occluded_ppe_training).

colcon on a ROS 2 system runs this with setup.cfg's script_dir, so the console scripts land in
lib/occluded_ppe_ros/ where `ros2 run` and `ros2 launch` look. `pip install` (scripts/setup.sh) puts
them in the venv's bin/ and the setup script copies `ppe_node` into lib/occluded_ppe_ros/.
"""
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE_NAME = 'occluded_ppe_ros'
HERE = Path(__file__).resolve().parent


def _tree(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing every file under `folder` into share/<package>/<folder>/..."""
    entries: dict[str, list[str]] = {}
    for path in sorted((HERE / folder).rglob('*')):
        if path.is_file() and '__pycache__' not in path.parts:
            relative = path.relative_to(HERE)
            target = str(Path('share') / PACKAGE_NAME / relative.parent)
            entries.setdefault(target, []).append(str(relative))
    return sorted(entries.items())


training_packages = find_packages(where='training')
setup(
    name=PACKAGE_NAME,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE_NAME, f'{PACKAGE_NAME}.*'])
    + ['occluded_ppe_training'] + [f'occluded_ppe_training.{p}' for p in training_packages],
    package_dir={'occluded_ppe_training': 'training'},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE_NAME}']),
        (f'share/{PACKAGE_NAME}', ['package.xml']),
        *_tree('launch'),
        *_tree('config'),
        *_tree('models'),
        *_tree('samples'),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='occluded_ppe_ros maintainers',
    maintainer_email='maintainers@occluded-ppe.invalid',
    description='Occluded pedestrian pose estimation (detection, instance masks, 13 keypoints) for ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'ppe_node = occluded_ppe_ros.ros.node:main',
            'ppe = occluded_ppe_ros.cli:main',
        ],
    },
)
