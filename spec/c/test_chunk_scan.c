/*
 * test_chunk_scan.c: unit tests of src/chunk_scan.c: which chunks are plain,
 * what it picks out of them, escapes, and that it never reads past the end
 * (every case is also scanned from a malloc'ed copy of exactly its length,
 * and a plain chunk cut anywhere before its closing brace must be "not plain").
 *
 * Owns: nothing but its test cases. Links only the layers below Lua.
 * Never: includes lua.h.
 * Run from the repo root: build/spec/test_chunk_scan (arguments are ignored).
 */
#include <stdlib.h>
#include <string.h>

#include "chunk_scan.h"
#include "test.h"

#define HEAD "\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\""

struct scan_case {
	const char *name;
	const char *json;
	int plain;
	const char *content;   /* decoded; NULL: none */
	const char *reasoning;
	const char *args;
	long choice_index;
	long tool_index;
	unsigned head;
};

static const struct scan_case cases[] = {
	{ "text delta", "{" HEAD ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}",
	  1, "Hi", NULL, NULL, 0, -1, CHUNK_HEAD_ID | CHUNK_HEAD_MODEL | CHUNK_HEAD_CREATED },
	{ "whitespace everywhere", " { \"choices\" : [ { \"delta\" : { \"content\" : \"a\" } } ] } \n",
	  1, "a", NULL, NULL, 0, -1, 0 },
	{ "escapes decode", "{\"choices\":[{\"delta\":{\"content\":\"q\\\"b\\\\s\\/n\\nt\\tu\\u00e9\\ud83d\\ude00\"}}]}",
	  1, "q\"b\\s/n\nt\tu\xc3\xa9\xf0\x9f\x98\x80", NULL, NULL, 0, -1, 0 },
	{ "reasoning_content wins over reasoning",
	  "{\"choices\":[{\"delta\":{\"reasoning\":\"r\",\"reasoning_content\":\"rc\"}}]}", 1, NULL, "rc", NULL, 0, -1, 0 },
	{ "reasoning when reasoning_content is empty",
	  "{\"choices\":[{\"delta\":{\"reasoning_content\":\"\",\"reasoning\":\"r\"}}]}", 1, NULL, "r", NULL, 0, -1, 0 },
	{ "a tool fragment", "{\"choices\":[{\"index\":2,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"{\\\"a\\\"\"}}]}}]}",
	  1, NULL, NULL, "{\"a\"", 2, 1, 0 },
	{ "empty choices", "{\"choices\":[],\"usage\":null,\"error\":null}", 1, NULL, NULL, NULL, 0, -1, 0 },
	{ "object is allowed", "{\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"c\"}}]}",
	  1, "c", NULL, NULL, 0, -1, 0 },
	/* allow-list: any key the scanner does not name is not plain (it may need a merge rule) */
	{ "an unknown top-level key", "{\"x\":[1,-2.5,true,false,null,{\"y\":[[]]}],\"choices\":[{\"delta\":{\"content\":\"c\"}}]}",
	  0, NULL, NULL, NULL, 0, -1, 0 },
	{ "an unknown delta key", "{\"choices\":[{\"delta\":{\"content\":\"c\",\"z\":{}}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a fingerprint (handed over)", "{\"system_fingerprint\":\"fp\",\"choices\":[]}", 1, NULL, NULL, NULL, 0, -1, 0 },
	{ "service_tier (handed over)", "{\"service_tier\":\"default\",\"choices\":[]}", 1, NULL, NULL, NULL, 0, -1, 0 },
	{ "an empty fingerprint (it would replace one)", "{\"system_fingerprint\":\"\",\"choices\":[]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a fingerprint that is no string", "{\"system_fingerprint\":5,\"choices\":[]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "citations", "{\"citations\":[\"u\"],\"choices\":[]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "annotations", "{\"choices\":[{\"delta\":{\"content\":\"c\",\"annotations\":[]}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "audio", "{\"choices\":[{\"delta\":{\"audio\":{\"transcript\":\"t\"}}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "content_filter_results", "{\"choices\":[{\"delta\":{\"content\":\"c\"},\"content_filter_results\":{}}]}",
	  0, NULL, NULL, NULL, 0, -1, 0 },
	{ "an unknown tool call key", "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"x\":1,\"function\":{\"arguments\":\"a\"}}]}}]}",
	  0, NULL, NULL, NULL, 0, -1, 0 },
	{ "an unknown function key", "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"a\",\"x\":1}}]}}]}",
	  0, NULL, NULL, NULL, 0, -1, 0 },
	{ "an empty id is no head field", "{\"id\":\"\",\"model\":null,\"choices\":[]}", 1, NULL, NULL, NULL, 0, -1, 0 },
	/* not plain */
	{ "usage", "{\"choices\":[],\"usage\":{\"total_tokens\":1}}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "an error", "{\"error\":{\"message\":\"x\"}}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a finish reason", "{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "two choices", "{\"choices\":[{\"delta\":{}},{\"delta\":{}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a tool call id", "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\"}]}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a tool call without index", "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"arguments\":\"x\"}}]}}]}",
	  0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a function name", "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\"}}]}}]}",
	  0, NULL, NULL, NULL, 0, -1, 0 },
	{ "two tool calls", "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0},{\"index\":1}]}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a message instead of a delta", "{\"choices\":[{\"message\":{\"content\":\"x\"}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "logprobs", "{\"choices\":[{\"delta\":{},\"logprobs\":{\"content\":[]}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a float index", "{\"choices\":[{\"index\":1.0,\"delta\":{}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a negative index", "{\"choices\":[{\"index\":-1,\"delta\":{}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "an exponent", "{\"created\":1e5,\"choices\":[]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a leading zero", "{\"created\":01,\"choices\":[]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a duplicate key", "{\"choices\":[],\"choices\":[]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "an escaped key", "{\"\\u0063hoices\":[]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a raw control byte", "{\"choices\":[{\"delta\":{\"content\":\"a\x01\"}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a lone high surrogate", "{\"choices\":[{\"delta\":{\"content\":\"\\ud800x\"}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a lone low surrogate", "{\"choices\":[{\"delta\":{\"content\":\"\\udc00\"}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a bad escape", "{\"choices\":[{\"delta\":{\"content\":\"\\x\"}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "content not a string", "{\"choices\":[{\"delta\":{\"content\":5}}]}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "trailing bytes", "{\"choices\":[]} x", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "a trailing comma", "{\"choices\":[],}", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "not an object", "[1]", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "empty", "", 0, NULL, NULL, NULL, 0, -1, 0 },
	{ "deep nesting",
	  "{\"created\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],\"choices\":[]}",
	  0, NULL, NULL, NULL, 0, -1, 0 },
};

/* The decoded text of t, or NULL when absent. */
static char *decoded(const struct chunk_text *t)
{
	char *s;
	if (t->p == NULL)
		return NULL;
	s = malloc(t->len + 1);
	s[chunk_unescape(t, s)] = '\0';
	return s;
}

static void check_text(int line, const char *what, const struct chunk_text *t, const char *want)
{
	char *got = decoded(t);
	if ((got == NULL) != (want == NULL) || (got && strcmp(got, want) != 0))
		t_fail(line, "%s is \"%s\", want \"%s\"", what, got ? got : "(none)", want ? want : "(none)");
	free(got);
}

static void test_case(const struct scan_case *c)
{
	struct chunk_scan sc;
	size_t n = strlen(c->json);
	char *copy = malloc(n ? n : 1); /* exactly n bytes: a read past the end shows under ASan */
	int plain;
	t_begin(c->name);
	memcpy(copy, c->json, n);
	plain = chunk_scan(copy, n, &sc);
	T_EQ_INT(plain, c->plain);
	if (plain && c->plain) {
		check_text(__LINE__, "content", &sc.content, c->content);
		check_text(__LINE__, "reasoning", &sc.reasoning, c->reasoning);
		T_EQ_INT(sc.has_args, c->args != NULL);
		if (c->args) {
			check_text(__LINE__, "args", &sc.args, c->args);
			T_EQ_INT(sc.tool_index, c->tool_index);
		}
		T_EQ_INT(sc.choice_index, c->choice_index);
		if (strstr(c->json, "\"system_fingerprint\":\"fp\""))
			check_text(__LINE__, "fingerprint", &sc.fingerprint, "fp");
		if (strstr(c->json, "\"service_tier\":\"default\""))
			check_text(__LINE__, "service_tier", &sc.service_tier, "default");
		T_EQ_INT(sc.head, c->head);
		size_t close = (size_t)(strrchr(c->json, '}') - c->json);
		for (size_t k = 0; k <= close; k++) /* cut before its last brace, a chunk is not plain */
			if (chunk_scan(copy, k, &sc))
				t_fail(__LINE__, "the first %zu bytes scanned as plain", k);
	}
	free(copy);
	t_end();
}

int main(void)
{
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		test_case(&cases[i]);
	return t_summary("test_chunk_scan");
}
