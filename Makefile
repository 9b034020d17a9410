# For systems without Debian packages: builds berth and installs it (or
# removes it) with scripts/install.sh. PREFIX and DESTDIR as usual.
#   make && sudo make install PREFIX=/usr/local
#   sudo systemd-sysusers berth.conf && sudo systemctl daemon-reload && sudo systemctl enable --now berth.target
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all install uninstall deb

all:
	cargo build --release --workspace --bins
	scripts/build-shim.sh

install:
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) scripts/install.sh

uninstall:
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) scripts/install.sh --uninstall

deb:
	scripts/build-deb.sh
