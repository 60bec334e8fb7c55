/* client.conf: the INI files orion_virt/config.py reads for orion-check and the tools, read the
 * same way for the native client (orion_ctl.c for [controller]/[client], orion_log.c for
 * [client-log]). */
#define _GNU_SOURCE
#include "orion_conf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define ORION_CONF_MAX_LINE 4096

char *orion_conf_trim(char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) s[--n] = '\0';
    return s;
}

/* The value of `key` in `[section]` of an INI file as orion_virt/config.py reads it (';' and '#'
 * comments, inline after whitespace; '=' or ':'; keys case-insensitive; quotes removed).
 * 1 found, 0 not (or no such file). */
int orion_conf_lookup(const char *path, const char *section, const char *key, char *out, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    char line[ORION_CONF_MAX_LINE], cur[256] = "";
    int found = 0, lines = 0;
    while (fgets(line, sizeof line, f) && lines++ < 10000) {
        char *s = orion_conf_trim(line);
        if (!*s || *s == ';' || *s == '#') continue;
        if (*s == '[') {
            char *e = strchr(s, ']');
            if (e && (size_t)(e - s - 1) < sizeof cur) {
                memcpy(cur, s + 1, (size_t)(e - s - 1));
                cur[e - s - 1] = '\0';
            } else {
                cur[0] = '\0';
            }
            continue;
        }
        if (strcmp(cur, section)) continue;
        char *d = strpbrk(s, "=:");
        if (!d) continue;
        *d = '\0';
        if (strcasecmp(orion_conf_trim(s), key)) continue;
        char *v = d + 1;
        for (char *p = v; *p; p++)  /* inline comment: ';' or '#' after whitespace */
            if ((*p == ';' || *p == '#') && p > v && (p[-1] == ' ' || p[-1] == '\t')) {
                *p = '\0';
                break;
            }
        v = orion_conf_trim(v);
        size_t n = strlen(v);
        if (n >= 2 && v[0] == v[n - 1] && (v[0] == '"' || v[0] == '\'')) {
            v[n - 1] = '\0';
            v++;
        }
        if (strlen(v) < cap) {
            snprintf(out, cap, "%s", v);
            found = 1;
        }
    }
    fclose(f);
    return found;
}

int orion_conf_paths(char paths[2][600])
{
    const char *etc = getenv("ORION_CLIENT_CONF_ETC");
    const char *home = getenv("HOME");
    snprintf(paths[0], 600, "%s", etc ? etc : "/etc/orion/client.conf");
    paths[1][0] = '\0';
    if (home && *home) snprintf(paths[1], 600, "%s/.orion/client.conf", home);
    return paths[1][0] ? 2 : 1;
}

int orion_conf_setting(const char *env, const char *section, const char *key, char *out, size_t cap,
                       char *origin, size_t ocap)
{
    const char *v = env ? getenv(env) : NULL;
    if (v) {
        char tmp[1024];
        snprintf(tmp, sizeof tmp, "%s", v);
        char *t = orion_conf_trim(tmp);
        if (*t) {
            snprintf(out, cap, "%s", t);
            snprintf(origin, ocap, "environment %s", env);
            return 1;
        }
    }
    char paths[2][600];
    int n = orion_conf_paths(paths), found = 0;
    for (int i = 0; i < n; i++) {
        char raw[1024];
        if (!paths[i][0] || !orion_conf_lookup(paths[i], section, key, raw, sizeof raw)) continue;
        snprintf(out, cap, "%s", orion_conf_trim(raw));
        snprintf(origin, ocap, "%s", paths[i]);
        found = 1;
    }
    return found;
}

int orion_conf_bool(const char *text)
{
    static const char *const yes[] = {"1", "true", "yes", "on"}, *const no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (!strcasecmp(text, yes[i])) return 1;
        if (!strcasecmp(text, no[i])) return 0;
    }
    return -1;
}

int orion_parse_mib(const char *text, long *out)
{
    char buf[64];
    if (!text || strlen(text) >= sizeof buf) return -1;
    snprintf(buf, sizeof buf, "%s", text);
    char *t = orion_conf_trim(buf), *end;
    if (!*t || *t == '-' || *t == '+') return -1;
    errno = 0;
    unsigned long long n = strtoull(t, &end, 10);
    if (errno || end == t) return -1;
    unsigned long long mult = 1;
    if (!strcasecmp(end, "G") || !strcasecmp(end, "GB") || !strcasecmp(end, "GiB")) mult = 1024;
    else if (*end && strcasecmp(end, "M") && strcasecmp(end, "MB") && strcasecmp(end, "MiB")) return -1;
    if (n < 1 || n > 0xFFFFFFFFull / mult) return -1;
    *out = (long)(n * mult);
    return 0;
}

int orion_conf_fwcfg(const char *key, char *out, size_t cap, char *why, size_t wcap)
{
    const char *path = getenv("ORION_FWCFG_PATH");
    if (!path || !*path) path = ORION_FWCFG_DEFAULT;
    why[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) return 0;
        snprintf(why, wcap, "%s: cannot read the host agent's addresses: %s%s", path, strerror(errno),
                 errno == EACCES ? " (fw_cfg is readable by root only)" : "");
        return -2;
    }
    char buf[ORION_FWCFG_MAX + 2];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 && (r = read(fd, buf + len, sizeof buf - 1 - len)) != 0) {
        if (r < 0) {
            if (errno == EINTR) continue;
            snprintf(why, wcap, "%s: cannot read the host agent's addresses: %s", path, strerror(errno));
            close(fd);
            return -2;
        }
        len += (size_t)r;
    }
    close(fd);
    if (len > ORION_FWCFG_MAX) {
        snprintf(why, wcap, "%s: more than %d bytes, not an entry orion-virt attach wrote", path, ORION_FWCFG_MAX);
        return -1;
    }
    buf[len] = '\0';
    size_t klen = strlen(key);
    for (char *line = buf, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = '\0';
        char *k = orion_conf_trim(line);
        if (strlen(k) != klen || strcmp(k, key)) continue;
        char *v = orion_conf_trim(eq + 1);
        if (strlen(v) >= cap) {
            snprintf(why, wcap, "%s (" ORION_FWCFG_ORIGIN "): %s is longer than %zu characters", path, key, cap - 1);
            return -1;
        }
        snprintf(out, cap, "%s", v);
        snprintf(why, wcap, "%s", path);
        return 1;
    }
    return 0;
}
