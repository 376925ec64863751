/*
 * curl_dl.h: libcurl, loaded on first need instead of at program start.
 *
 * Owns: the one process-wide handle from dlopen("libcurl.so.4") and a table
 * of pointers to the curl_* functions the engine calls. Linking -lcurl made
 * the dynamic loader map libcurl and its ~30 dependencies (TLS, HTTP/2, IDN,
 * LDAP, ...) before main(), the bulk of start-up time for scripts that never
 * make a request. curl.h is still the source of every type and constant.
 * Never: includes lua.h, aborts, or calls dlclose (curl and its TLS library
 * keep process-wide state once initialised).
 */
#ifndef LCHAT_CURL_DL_H
#define LCHAT_CURL_DL_H

#include <stddef.h>

#include <curl/curl.h>

/* The library to load: the soname of libcurl's ABI 4, what -lcurl records. */
#ifndef CURL_DL_SONAME
#define CURL_DL_SONAME "libcurl.so.4"
#endif

/*
 * Every curl function the engine uses: X(return type, name without
 * "curl_", parameter list). Adding a call to another curl function means
 * one line here; curl_dl.c checks each against curl.h's prototype.
 */
#define CURL_DL_FUNCTIONS(X) \
	X(CURLcode, global_init, (long)) \
	X(void, global_cleanup, (void)) \
	X(curl_version_info_data *, version_info, (CURLversion)) \
	X(CURL *, easy_init, (void)) \
	X(void, easy_cleanup, (CURL *)) \
	X(CURLcode, easy_setopt, (CURL *, CURLoption, ...)) \
	X(CURLcode, easy_getinfo, (CURL *, CURLINFO, ...)) \
	X(const char *, easy_strerror, (CURLcode)) \
	X(CURLcode, easy_pause, (CURL *, int)) \
	X(CURLM *, multi_init, (void)) \
	X(CURLMcode, multi_cleanup, (CURLM *)) \
	X(CURLMcode, multi_setopt, (CURLM *, CURLMoption, ...)) \
	X(CURLMcode, multi_add_handle, (CURLM *, CURL *)) \
	X(CURLMcode, multi_remove_handle, (CURLM *, CURL *)) \
	X(CURLMcode, multi_socket_action, (CURLM *, curl_socket_t, int, int *)) \
	X(CURLMcode, multi_assign, (CURLM *, curl_socket_t, void *)) \
	X(CURLMsg *, multi_info_read, (CURLM *, int *)) \
	X(CURLMcode, multi_timeout, (CURLM *, long *)) \
	X(const char *, multi_strerror, (CURLMcode)) \
	X(struct curl_slist *, slist_append, (struct curl_slist *, const char *)) \
	X(void, slist_free_all, (struct curl_slist *))

#define CURL_DL_MEMBER(ret, name, params) ret (*name) params;
/* curl_dl.easy_init() calls curl_easy_init(); valid only after curl_dl_load succeeded. */
struct curl_dl_api {
	CURL_DL_FUNCTIONS(CURL_DL_MEMBER)
};
#undef CURL_DL_MEMBER

extern struct curl_dl_api curl_dl;

/*
 * Load libcurl, resolve every function above and run curl_global_init,
 * all once per process (later calls return the first outcome; thread-safe).
 * 0 on success; -1 with a one-line message in err, e.g. "cannot load
 * libcurl.so.4: <dlerror()>", and curl_dl stays unusable.
 */
int curl_dl_load(char *err, size_t errlen);
/* libcurl's runtime version string ("7.88.1"), loading it; NULL with a message in err. */
const char *curl_dl_version(char *err, size_t errlen);
/* curl_global_cleanup if libcurl was loaded; for a host's exit path, after its last engine is gone. */
void curl_dl_cleanup(void);

#endif
