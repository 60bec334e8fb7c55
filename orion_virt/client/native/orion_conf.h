/* client.conf for the native client, read as orion_virt/config.py reads it. */
#ifndef ORION_CONF_H
#define ORION_CONF_H

#include <stddef.h>

/* Whitespace stripped in place at both ends; returns the start. */
char *orion_conf_trim(char *s);
/* The value of `key` in `[section]` of the INI file `path` (the last one wins; ';' and '#'
 * comments; '=' or ':'; keys case-insensitive; quotes removed). 1 found, 0 not or no file. */
int orion_conf_lookup(const char *path, const char *section, const char *key, char *out, size_t cap);
/* The client.conf files in the order they apply, later over earlier: /etc/orion/client.conf
 * (ORION_CLIENT_CONF_ETC) and ~/.orion/client.conf; returns how many were named. */
int orion_conf_paths(char paths[2][600]);
/* A client setting as orion_virt/config.py resolves it: the environment variable `env` (set and
 * not blank) over `key` in `[section]` of the client.conf files (the later file wins), trimmed.
 * 1 found: out, and origin "environment NAME" or the file's path; 0 not set anywhere. */
int orion_conf_setting(const char *env, const char *section, const char *key, char *out, size_t cap,
                       char *origin, size_t ocap);
/* true/false as config.py's parse_bool takes them (1/0, true/false, yes/no, on/off, any case):
 * 1 or 0; -1 for anything else. */
int orion_conf_bool(const char *text);

/* A size in MiB as ORION_GMEM takes it: 4096, 4096M, 4096MiB, 4G, 4GiB (case-insensitive).
 * 0 with *out set; -1 for anything else (zero, negative, over 2^32-1 MiB). */
int orion_parse_mib(const char *text, long *out);

/* The host agent's fw_cfg entry in a VM (orion_virt/hostagent_addrs.py): the value of `key`
 * in its key=value lines, not validated. Path: ORION_FWCFG_PATH, else ORION_FWCFG_DEFAULT.
 * 1 found (out; the path in why), 0 no entry or no such key, -1 unusable (longer than
 * ORION_FWCFG_MAX bytes, or the value than cap; why says so), -2 unreadable (why says so). */
#define ORION_FWCFG_DEFAULT "/sys/firmware/qemu_fw_cfg/by_name/opt/org.orion/config/raw"
#define ORION_FWCFG_ORIGIN "fw_cfg opt/org.orion/config"
#define ORION_FWCFG_MAX 4096
int orion_conf_fwcfg(const char *key, char *out, size_t cap, char *why, size_t wcap);

#endif
