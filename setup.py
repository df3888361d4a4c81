"""Packaging for Vespa. The twistd plugin lives in ``twisted/plugins`` (no ``__init__.py``)."""

from setuptools import find_packages, setup

setup(
    name="vespa-worker",
    version="0.1.0",
    description="Serverless worker proxy for GPU model servers on Vast.ai, built on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # twisted/plugins must not be a package of ours: it is listed by name so the
    # plugin module is installed into Twisted's plugin directory.
    packages=find_packages(include=["vespa", "vespa.*"]) + ["twisted.plugins"],
    package_data={
        "twisted": ["plugins/vespa_plugin.py", "plugins/vespa_reactor.py"],
        "vespa": ["py.typed"],
    },
    install_requires=[
        "twisted[tls,http2]>=24.7",
        "treq",
        "pyopenssl",
        "service-identity",
        "pycryptodome",
        "psutil",
        # Metrics exposition in the format every scraper reads.
        "prometheus_client",
        # vespa-loadtest's live view on a terminal.
        "rich",
    ],
    extras_require={
        # openai: the client is tested with the real SDK as a caller.
        # vastai: the worker is tested with Vast's official client (1.9.1 is
        # the protocol reference, see README "Compatibility").
        # pyhamcrest: Twisted's own reactor tests (twisted.internet.test) import
        # it; tests/test_reactor_twisted.py runs them against Vespa's reactor.
        "test": ["hypothesis", "supervisor", "openai", "vastai==1.9.1", "pyhamcrest"],
    },
    entry_points={
        "console_scripts": [
            "vespa-certs = vespa.tls:main",
            "vespa-client = vespa.client.cli:main",
            "vespa-loadtest = vespa.loadtest.cli:main",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
    ],
)
