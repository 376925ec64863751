/* json_hex.h: the four hex digits of a JSON \uXXXX escape, shared by the JSON
 * decoder (lchat_json.c) and the chunk scanner (chunk_scan.c). No Lua, no
 * allocation; the caller checks that four bytes are there. */
#ifndef LCHAT_JSON_HEX_H
#define LCHAT_JSON_HEX_H

/* Reads p[0..3] as hex into *v: 0, or -1 on a byte that is not a hex digit. */
static inline int json_hex4(const char *p, unsigned *v)
{
	unsigned r = 0;
	for (int i = 0; i < 4; i++) {
		char h = p[i];
		r <<= 4;
		if (h >= '0' && h <= '9')
			r |= (unsigned)(h - '0');
		else if (h >= 'a' && h <= 'f')
			r |= (unsigned)(h - 'a' + 10);
		else if (h >= 'A' && h <= 'F')
			r |= (unsigned)(h - 'A' + 10);
		else
			return -1;
	}
	*v = r;
	return 0;
}

#endif
