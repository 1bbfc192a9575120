from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.split("#")[0].strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]

setup(
    name="uhved_tf",
    version="0.1.0",
    description="U-HVED: hetero-modal variational encoder-decoder for brain-tumour segmentation "
    "and modality completion from any subset of T1, T1c, T2 and FLAIR (TensorFlow 2 / Keras 3).",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["uhved_tf", "uhved_tf.*", "extensions", "extensions.*"]),
    install_requires=requirements,
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "ruff>=0.6"]},
    entry_points={"console_scripts": ["uhved_tf=uhved_tf.cli:run"]},
)
