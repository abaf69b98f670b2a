# maekit: `make demo` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.maekit-installed
# torch is installed first and pinned here (override on other machines: make TORCH="torch torchvision")
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: system-deps install demo demo-medical demo-pointcloud test docs bench realdata clean

# open3d needs libusb at import time on Debian/Ubuntu; installed when missing (root or sudo)
system-deps:
	@ldconfig -p | grep -q libusb-1.0.so.0 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q libusb-1.0-0 || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q libusb-1.0-0; }; }

$(STAMP): pyproject.toml Makefile | system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m maekit.demo --out demo_run

demo-medical: install
	$(PY) -m maekit.demo_medical --out demo_medical

demo-pointcloud: install
	$(PY) -m maekit.demo_pointcloud --out demo_pointcloud

test: install
	$(PY) -m pytest -q -p no:cacheprovider

# the documentation site in site/ (mkdocs-material + mkdocstrings; the `docs` extra, part of `dev`)
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# real labelled data (../shared/realdata-labelled; skips with a message when absent): pretrain, then probe
# (about 10 CPU minutes per set on 2 quiet cores; not part of `make test`). REALDATA=DIR to read elsewhere
REALDATA ?= ../shared/realdata-labelled
realdata: install
	$(PY) -m maekit.realdata --data $(REALDATA) --out realdata_out

bench: install
	$(PY) benchmarks/mae_step.py
	$(PY) benchmarks/geotiff_chips.py
	$(PY) benchmarks/mri_step.py
	$(PY) benchmarks/pointcloud_ops.py
	$(PY) benchmarks/tiled_memory.py --sizes 1024 4096
	$(PY) benchmarks/wavelength_embed.py --quality

clean:
	rm -rf demo_run demo_medical demo_pointcloud realdata_out runs lightning_logs benchmarks/_data site .cache/mkdocs-jupyter
