"""Packaging for close-sync; also usable as Beam's --setup_file for Dataflow/Flink workers."""

from setuptools import find_packages, setup

setup(
    name="close-sync",
    version="0.1.0",
    description="Apache Beam job that keeps Close CRM leads and contacts in sync with customer events",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["closecrm", "closecrm.*", "closesim", "closesim.*", "transforms", "transforms.*", "pipeline", "pipeline.*"]),
    package_data={"": ["*.json", "*.avsc"]},
    data_files=[("schemas", ["schemas/event.avsc", "schemas/config.schema.json"])],
    install_requires=[
        "apache-beam[gcp]>=2.77,<2.78",  # pipeline/beam_patches.py patches this minor version's internals
        "httpx>=0.28,<0.29",
        "aiohttp>=3.14,<4",
        "pyarrow>=14",
        "fastavro>=1.9,<2",
        "pyyaml>=6,<7",
        "pydantic>=2.7,<3",
        "click>=8.1,<9",
        "rich>=13,<16",
        "phonenumbers>=9,<10",
        "email-validator>=2.1,<3",
        "confluent-kafka>=2.4,<3",
        # snapshot-sync --from: Arrow-native warehouse readers (closecrm/reverse_etl/warehouse.py)
        "duckdb>=2.0,<3",
        "adbc-driver-manager>=1.3,<2",
        "adbc-driver-postgresql>=1.3,<2",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            "hypothesis>=6.100,<7",
            "closeio==2.1",
            "ruff>=0.6",
            "import-linter>=2.1,<3",  # make test: the floor plan in pyproject.toml
        ],
    },
    entry_points={"console_scripts": ["close-sync=pipeline.cli:main"]},
)
