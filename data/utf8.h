// UTF-8 helpers shared by the JSON parser, the tokenizers and build/tokenize (header-only: they are tiny and hot).
#ifndef UTF8_H
#define UTF8_H

#include <stddef.h>
#include <stdint.h>

// Byte length of the well-formed UTF-8 character at s (1..4), or 0 when the bytes there are not one: overlong
// forms, surrogates (U+D800..U+DFFF), code points above U+10FFFF and truncated sequences are all rejected.
static inline int utf8_char_len(const unsigned char *s, size_t avail) {
    if (avail == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0;
    if (c < 0xE0) return avail >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c < 0xF0) {
        if (avail < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0;          // overlong
        if (c == 0xED && s[1] >= 0xA0) return 0;         // surrogate
        return 3;
    }
    if (c < 0xF5) {
        if (avail < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0;          // overlong
        if (c == 0xF4 && s[1] >= 0x90) return 0;         // above U+10FFFF
        return 4;
    }
    return 0;
}

// Offset of the first byte that does not start a well-formed character, or n when all of s[0:n] is valid UTF-8.
static inline size_t utf8_first_invalid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) { i++; continue; }
        int k = utf8_char_len(u + i, n - i);
        if (!k) return i;
        i += (size_t)k;
    }
    return n;
}

// Writes code point cp (<= U+10FFFF, not a surrogate) as UTF-8 into out; returns the byte count.
static inline size_t utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// Decodes the well-formed character at s (caller checked it with utf8_char_len); returns its code point.
static inline uint32_t utf8_decode(const unsigned char *s, int len) {
    switch (len) {
    case 1: return s[0];
    case 2: return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    case 3: return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    default: return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
                    ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    }
}

#endif
