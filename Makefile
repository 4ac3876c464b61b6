# Two entry points: `make demo` and `make test`. Both set up .venv (reused while pyproject.toml is unchanged)
# and, when run as root, install the Debian packages the cross-compile and emulation steps need.
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.edgenas-installed
APT_PKGS  := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
DEMO_RUN  := runs/demo

.PHONY: demo test setup sysdeps clean

setup: sysdeps $(STAMP)

sysdeps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
	  echo "warning: missing Debian packages:$$missing (run 'sudo apt-get install$$missing'); compile/profile for ARM targets will not work"; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/edgenas search --target=cortex-m7 --out $(DEMO_RUN) --resume
	$(BIN)/edgenas export $(DEMO_RUN) --best --out $(DEMO_RUN)/export
	$(BIN)/edgenas compile $(DEMO_RUN)/export/model.onnx --target cortex-m7 --out $(DEMO_RUN)/firmware

# two xdist workers, one per core, each running whole modules (module fixtures are built once; the costly session
# fixtures of tests/conftest.py are built once per run for both)
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadscope

clean:
	rm -rf $(VENV) runs build *.egg-info toolchain/*.egg-info
