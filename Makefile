# luachat: plain GNU make. `make` builds the host, the Lua C module and the C tests.
# Package names are overridable, e.g. `make LUA_PC=lua-5.4`.

LUA_PC    ?= lua5.4
CURL_PC   ?= libcurl
PREFIX    ?= /usr/local
DESTDIR   ?=
CC        ?= cc
BUILD     ?= build
LUA_VER   := 5.4

PKG_CFLAGS := $(shell pkg-config --cflags $(LUA_PC) $(CURL_PC) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(LUA_PC) $(CURL_PC) 2>/dev/null)

WARN    := -Wall -Wextra -Wpedantic -Werror -Wshadow -Wwrite-strings \
           -Wmissing-prototypes -Wstrict-prototypes
CFLAGS  ?= -O2 -g
ALL_CFLAGS = -std=c11 -D_POSIX_C_SOURCE=200809L $(WARN) $(CFLAGS) $(EXTRA_CFLAGS) -fPIC \
             -Isrc -Iinclude $(PKG_CFLAGS) -MMD -MP
ALL_LDFLAGS = $(LDFLAGS) $(EXTRA_LDFLAGS)

# Layers: no Lua below the bindings, so the C tests link them alone.
BASE_SRC  := src/buf.c src/sse.c
HTTP_SRC  := src/http.c
BIND_SRC  := src/lchat_core.c src/lchat_transfer.c src/lchat_err.c src/lchat_json.c
HOST_SRC  := src/main.c src/lchat_readline.c

obj = $(patsubst src/%.c,$(BUILD)/%.o,$(1))
BASE_OBJ := $(call obj,$(BASE_SRC))
HTTP_OBJ := $(call obj,$(HTTP_SRC))
BIND_OBJ := $(call obj,$(BIND_SRC))
HOST_OBJ := $(call obj,$(HOST_SRC))
ENGINE_OBJ := $(BASE_OBJ) $(HTTP_OBJ) $(BIND_OBJ)

C_TESTS := $(patsubst spec/c/%.c,$(BUILD)/spec/%,$(wildcard spec/c/test_*.c))

HOST   := luachat
MODULE := $(BUILD)/luachat/core.so

.PHONY: all test check asan valgrind fuzz bench demo install uninstall clean deps

all: $(HOST) $(MODULE) $(C_TESTS)

$(BUILD)/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# The host links the engine in and preloads it; -Wl,-E lets C modules it
# loads (cjson.so) resolve Lua symbols from the process.
$(HOST): $(HOST_OBJ) $(ENGINE_OBJ)
	$(CC) $(ALL_CFLAGS) -Wl,-E -o $@ $^ $(ALL_LDFLAGS) $(PKG_LIBS) -lreadline -lm

# The module for a stock lua5.4: Lua symbols come from the interpreter.
$(MODULE): $(ENGINE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -shared -o $@ $^ $(ALL_LDFLAGS) $(shell pkg-config --libs $(CURL_PC)) -lm

$(BUILD)/spec/test_%: spec/c/test_%.c $(BASE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(ALL_LDFLAGS)

deps:
	@scripts/deps.sh

test: deps all
	@scripts/run-tests.sh $(BUILD)

check: test asan

# AddressSanitizer + UBSan: a separate tree, then the whole suite.
asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan HOST=build-asan/luachat \
	  EXTRA_CFLAGS="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	  EXTRA_LDFLAGS="-fsanitize=address,undefined" build-asan/luachat all
	@ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=suppressions=$(CURDIR)/spec/lsan.supp \
	  LUACHAT_HOST=build-asan/luachat scripts/run-tests.sh build-asan

valgrind: all
	@scripts/valgrind.sh $(BUILD)

demo: deps all
	@scripts/demo.sh

bench: deps all
	@scripts/bench.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/lua/$(LUA_VER)/luachat \
	  $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_VER)/luachat
	install -m 755 $(HOST) $(DESTDIR)$(PREFIX)/bin/luachat
	install -m 644 lua/luachat/*.lua $(DESTDIR)$(PREFIX)/share/lua/$(LUA_VER)/luachat/
	install -m 755 $(MODULE) $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_VER)/luachat/core.so

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/luachat $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_VER)/luachat/core.so
	rm -rf $(DESTDIR)$(PREFIX)/share/lua/$(LUA_VER)/luachat
	-rmdir $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_VER)/luachat 2>/dev/null

clean:
	rm -rf build build-asan $(HOST)

-include $(wildcard $(BUILD)/*.d $(BUILD)/spec/*.d)
