/*
 * curl_dl.c: load libcurl with dlopen on first need (see curl_dl.h).
 *
 * Owns: the dlopen handle, the function table `curl_dl`, and the one
 * curl_global_init of the process. State is process-wide, like libcurl's
 * own global state, and written once under pthread_once.
 * Never: includes lua.h, aborts, calls dlclose, or retries a failed load
 * (the first outcome, success or its message, is every caller's answer).
 */
#include "curl_dl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

struct curl_dl_api curl_dl;

/* Each pointer comes from dlsym as a void *, copied into the table as is (POSIX allows this). */
_Static_assert(sizeof(void *) == sizeof(void (*)(void)), "function pointers must fit a void *");

/* Checked here, at compile time: each table entry has curl.h's type for that function. */
#define CURL_DL_CHECK(ret, name, params) \
	_Static_assert(_Generic(&curl_##name, ret (*) params: 1, default: 0), \
	               "curl_" #name ": the type in curl_dl.h differs from curl.h");
CURL_DL_FUNCTIONS(CURL_DL_CHECK)
#undef CURL_DL_CHECK

struct curl_dl_sym {
	const char *name;
	size_t offset; /* of its pointer in struct curl_dl_api */
};

#define CURL_DL_SYM(ret, name, params) { "curl_" #name, offsetof(struct curl_dl_api, name) },
static const struct curl_dl_sym curl_dl_syms[] = { CURL_DL_FUNCTIONS(CURL_DL_SYM) };
#undef CURL_DL_SYM

static pthread_once_t curl_dl_once = PTHREAD_ONCE_INIT;
static int curl_dl_ok;          /* written once, inside curl_dl_once */
static char curl_dl_err[320];   /* why the load failed, when it did */

static void curl_dl_fail(const char *what)
{
	const char *why = dlerror();
	snprintf(curl_dl_err, sizeof curl_dl_err, "cannot load %s: %s", CURL_DL_SONAME,
	         why ? why : what);
}

/* The pthread_once routine: dlopen, every dlsym, then curl_global_init. */
static void curl_dl_init(void)
{
	struct curl_dl_api api;
	size_t i;
	void *lib = dlopen(CURL_DL_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL) {
		curl_dl_fail("dlopen failed");
		return;
	}
	memset(&api, 0, sizeof api);
	for (i = 0; i < sizeof curl_dl_syms / sizeof curl_dl_syms[0]; i++) {
		void *p;
		dlerror(); /* a NULL symbol value is only an error if dlerror says so */
		p = dlsym(lib, curl_dl_syms[i].name);
		if (p == NULL) {
			curl_dl_fail(curl_dl_syms[i].name);
			return; /* the handle stays open: dlclose could run curl's destructors mid-process */
		}
		memcpy((char *)&api + curl_dl_syms[i].offset, &p, sizeof p);
	}
	/*
	 * Once per process, before any other curl call. curl_global_init is not
	 * thread-safe in every libcurl build (only from 7.84 with atomics);
	 * pthread_once makes this call the only one however many threads or
	 * lua_States start engines.
	 */
	if (api.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(curl_dl_err, sizeof curl_dl_err, "curl_global_init failed");
		return;
	}
	curl_dl = api;
	curl_dl_ok = 1;
}

int curl_dl_load(char *err, size_t errlen)
{
	if (pthread_once(&curl_dl_once, curl_dl_init) != 0) {
		snprintf(err, errlen, "cannot load %s: pthread_once failed", CURL_DL_SONAME);
		return -1;
	}
	if (!curl_dl_ok) {
		snprintf(err, errlen, "%s", curl_dl_err);
		return -1;
	}
	return 0;
}

const char *curl_dl_version(char *err, size_t errlen)
{
	if (curl_dl_load(err, errlen) != 0)
		return NULL;
	return curl_dl.version_info(CURLVERSION_NOW)->version;
}

void curl_dl_cleanup(void)
{
	/* The host calls this from its main thread, after any load that thread made. */
	if (curl_dl_ok)
		curl_dl.global_cleanup();
}
