/* orion_ptx: see orion_ptx.h. The grammar read: `.entry NAME ( .param [.qualifiers] .TYPE
 * [.qualifiers] PNAME [ [N] ] , ... )`, with whitespace and comments anywhere between tokens. */
#include "orion_ptx.h"

#include <string.h>

typedef struct {
    const char *p, *end;
} cursor;

static int is_ident(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$' ||
           c == '%';
}

static void skip_space(cursor *c)
{
    while (c->p < c->end) {
        if (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r') {
            c->p++;
        } else if (c->p + 1 < c->end && c->p[0] == '/' && c->p[1] == '/') {
            while (c->p < c->end && *c->p != '\n') c->p++;
        } else if (c->p + 1 < c->end && c->p[0] == '/' && c->p[1] == '*') {
            c->p += 2;
            while (c->p + 1 < c->end && !(c->p[0] == '*' && c->p[1] == '/')) c->p++;
            c->p = c->p + 1 < c->end ? c->p + 2 : c->end;
        } else {
            return;
        }
    }
}

/* The next token: a run of identifier characters, optionally after one '.', or one other character. */
static size_t token(cursor *c, const char **start)
{
    skip_space(c);
    *start = c->p;
    if (c->p >= c->end) return 0;
    const char *q = c->p;
    if (*q == '.') q++;
    while (q < c->end && is_ident(*q)) q++;
    if (q == c->p || (q == c->p + 1 && *c->p == '.')) q = c->p + 1;
    c->p = q;
    return (size_t)(q - *start);
}

static int tok_is(const char *t, size_t n, const char *s)
{
    return n == strlen(s) && !memcmp(t, s, n);
}

static uint32_t type_size(const char *t, size_t n)
{
    static const char *const names[] = {".u8", ".s8", ".b8", ".u16", ".s16", ".b16", ".f16", ".bf16",
                                        ".u32", ".s32", ".b32", ".f32", ".u64", ".s64", ".b64", ".f64",
                                        ".f16x2", ".bf16x2", ".pred"};
    static const uint32_t sizes[] = {1, 1, 1, 2, 2, 2, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8, 4, 4, 1};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (tok_is(t, n, names[i])) return sizes[i];
    return 0;
}

/* The parameter list after `.entry NAME`: count, or -1. */
static int params(cursor *c, uint32_t *sizes, int cap)
{
    const char *t;
    size_t n = token(c, &t);
    if (n == 1 && (*t == '{' || *t == ';' || *t == '.')) return 0;  /* no list: no parameters */
    if (!(n == 1 && *t == '(')) return -1;
    int count = 0;
    for (;;) {
        n = token(c, &t);
        if (n == 1 && *t == ')') return count;
        if (!tok_is(t, n, ".param")) return -1;
        uint32_t size = 0, elems = 1;
        int named = 0;
        for (;;) {
            n = token(c, &t);
            if (!n) return -1;
            if (n == 1 && (*t == ',' || *t == ')')) break;
            uint32_t ts = type_size(t, n);
            if (ts && !size) {
                size = ts;
            } else if (tok_is(t, n, ".align")) {
                token(c, &t);  /* its number */
            } else if (n == 1 && *t == '[') {
                n = token(c, &t);
                uint64_t v = 0;
                for (size_t i = 0; i < n; i++) {
                    if (t[i] < '0' || t[i] > '9' || v > 1u << 20) return -1;
                    v = v * 10 + (uint64_t)(t[i] - '0');
                }
                n = token(c, &t);
                if (!(n == 1 && *t == ']') || !v) return -1;
                elems = (uint32_t)v;
            } else if (*t != '.') {
                named = 1;
            }
        }
        if (!size || !named || (uint64_t)size * elems > 1u << 20) return -1;
        if (count < cap) sizes[count] = size * elems;
        count++;
        if (n == 1 && *t == ')') return count;
    }
}

int orion_ptx_param_sizes(const char *ptx, size_t len, const char *name, uint32_t *sizes, int cap)
{
    cursor c = {ptx, ptx + len};
    size_t want = strlen(name);
    const char *t;
    size_t n;
    while ((n = token(&c, &t)) != 0) {
        if (!tok_is(t, n, ".entry")) continue;
        n = token(&c, &t);
        if (n == want && !memcmp(t, name, n)) return params(&c, sizes, cap);
    }
    return -1;
}

int orion_ptx_is_text(const void *image, size_t len)
{
    const unsigned char *b = image;
    if (len < 4 || !memcmp(b, "\x7f" "ELF", 4) || (b[0] == 0x50 && b[1] == 0xed && b[2] == 0x55 && b[3] == 0xba) ||
        (b[0] == 0xb1 && b[1] == 0x43 && b[2] == 0x62 && b[3] == 0x46))  /* ELF, fatbin, fatbin wrapper */
        return 0;
    for (size_t i = 0; i < len && i < 4096; i++)
        if (b[i] == 0 && i + 1 != len) return 0;
    return 1;
}
