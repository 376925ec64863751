/* json_run.h: the end of a run of plain bytes inside a JSON string, found 8
 * bytes at a time (SWAR), shared by the JSON decoder (lchat_json.c) and the
 * chunk scanner (chunk_scan.c): a stream chunk is mostly string bytes, and a
 * byte-at-a-time loop was a fifth of the decoder's time. No Lua, no allocation. */
#ifndef LCHAT_JSON_RUN_H
#define LCHAT_JSON_RUN_H

#include <stdint.h>
#include <string.h>

#define JSON_RUN_ONES (~(uint64_t)0 / 255) /* 0x0101...01 */
#define JSON_RUN_HIGHS (JSON_RUN_ONES * 128) /* 0x8080...80 */

/* Nonzero when some byte of w is below n (n <= 128; exact as to whether one is). */
static inline uint64_t json_run_less(uint64_t w, unsigned n)
{
	return (w - JSON_RUN_ONES * n) & ~w & JSON_RUN_HIGHS;
}

/* Nonzero when some byte of w equals c (exact as to whether one does). */
static inline uint64_t json_run_has(uint64_t w, unsigned char c)
{
	return json_run_less(w ^ (JSON_RUN_ONES * c), 1);
}

/*
 * The first byte in [p, end) that is '"' or '\\', or (stop_control) a control
 * byte below 0x20; end when there is none. A word holding such a byte is left
 * to the byte loop, which finds which one it is.
 */
static inline const char *json_run(const char *p, const char *end, int stop_control)
{
	while (end - p >= 8) {
		uint64_t w, hit;
		memcpy(&w, p, 8);
		hit = json_run_has(w, '"') | json_run_has(w, '\\');
		if (stop_control)
			hit |= json_run_less(w, 0x20);
		if (hit)
			break;
		p += 8;
	}
	while (p < end && *p != '"' && *p != '\\' && !(stop_control && (unsigned char)*p < 0x20))
		p++;
	return p;
}

#endif
