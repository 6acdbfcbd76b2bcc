#include "runtime.h"
#include "memout_abi.h"

void *memset(void *d, int c, size_t n)
{
    unsigned char *p = d;
    while (n--)
        *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

/* Identity mapping: a pointer is its guest-physical address. */
void rt_puts(const char *s)
{
    rt_out32(MEMOUT_PORT_DEBUG_STR, (uint32_t)(uintptr_t)s);
}

void rt_exit(int code)
{
    for (;;)
        rt_out32(MEMOUT_PORT_EXIT, (uint32_t)code);
}

void rt_checkpoint(uint32_t id)
{
    rt_out32(RT_PORT_CHECKPOINT, id);
}

uint64_t rt_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static char *put_u(char *p, char *end, uint64_t v, unsigned base)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    while (n && p < end)
        *p++ = tmp[--n];
    return p;
}

void rt_printf(const char *fmt, ...)
{
    static char buf[512];
    char *p = buf, *end = buf + sizeof(buf) - 1;
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt && p < end; fmt++) {
        if (*fmt != '%') {
            *p++ = *fmt;
            continue;
        }
        int lng = 0;
        while (*++fmt == 'l')
            lng++;
        switch (*fmt) {
        case 'd': {
            int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
            if (v < 0 && p < end) {
                *p++ = '-';
                v = -v;
            }
            p = put_u(p, end, (uint64_t)v, 10);
            break;
        }
        case 'u':
            p = put_u(p, end, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10);
            break;
        case 'x':
            p = put_u(p, end, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16);
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            while (*s && p < end)
                *p++ = *s++;
            break;
        }
        case '%':
            *p++ = '%';
            break;
        default:
            if (!*fmt)
                fmt--;
            break;
        }
    }
    va_end(ap);
    *p = 0;
    rt_puts(buf);
}
