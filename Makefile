# Two commands from a clean clone: `make demo` (train + evaluate SCSN on the embedded synthetic dataset, CPU)
# and `make test` (the test suite). Both create .venv and install everything on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export FASTREID_DATASETS ?= $(CURDIR)/datasets

.PHONY: install demo test compat clean-venv

$(VENV)/.installed: setup.cfg pyproject.toml
	# The torch 2.14.1 wheel for x86_64 is a CUDA build: the finished .venv holds 6.1 GB; say so before pip runs out.
	@$(PYTHON) -c "import shutil, sys; free = shutil.disk_usage('.').free / 2**30; \
		free < 7 and sys.exit(f'make install needs 7 GB free: the finished .venv holds 6.1 GB (torch 2.14.1 is a CUDA build); {free:.1f} GB free here')"
	$(PYTHON) -m venv $(VENV)
	# torch first: fastreid 1.4.0's metadata pins torch 1.13.1 (no Python 3.11 wheel), so it goes in with --no-deps.
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --no-deps fastreid==1.4.0
	$(PY) -m pip install -e '.[dev,deploy]'  # deploy: ONNX export and its tests
	$(PY) -c "import scsn.fastreid_patches.compat as c; c.build_cython_evaluator() or print('Cython ranking not built: Python ranking will be used')"
	touch $@

install: $(VENV)/.installed

DEMO_DIR := logs/demo/$(shell date +%Y%m%d-%H%M%S)

demo: install
	$(PY) tools/train_net.py --config-file configs/Synthetic/scsn_r18.yml OUTPUT_DIR $(DEMO_DIR)
	$(PY) tools/visualize_saliency.py --config-file $(DEMO_DIR)/config.yaml --dataset SyntheticReID --num-images 8 \
		--output $(DEMO_DIR)/saliency MODEL.WEIGHTS $(DEMO_DIR)/model_final.pth

test: install
	$(PY) -m pytest -q tests

# The ends of setup.cfg's ranges (not CI's stack): the suite in a fresh environment at the lowest and at the newest
# versions -> results/compat.json. Builds two environments of several GB under .compat/ and removes them.
compat: install
	$(PY) tools/compat_matrix.py

clean-venv:
	rm -rf $(VENV)
