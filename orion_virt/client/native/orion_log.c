/* [client-log] for the native client: the screen lines and the log file, configured from the
 * keys orion_virt/config.py reads: log_with_time, log_to_screen,
 * log_to_file, log_level, file_log_level, log_dir (ORION_LOG_DIR; default ~/.orion/log), in
 * [client-log] (or the legacy [log]) of /etc/orion/client.conf and ~/.orion/client.conf. */
#define _GNU_SOURCE
#include "orion_log.h"

#include "orion_conf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static struct {
    int with_time, to_screen, to_file, screen_level, file_level;
    char dir[600];
} cfg = {0, 1, 1, 2, 2, ""};
static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t file_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *file;
static int file_failed;
static char file_path[800];

/* DEBUG 1, INFO 2, WARNING 3, ERROR 4; 0 for anything else. */
static int level_of(const char *s)
{
    if (!strcasecmp(s, "DEBUG")) return 1;
    if (!strcasecmp(s, "INFO")) return 2;
    if (!strcasecmp(s, "WARN") || !strcasecmp(s, "WARNING")) return 3;
    if (!strcasecmp(s, "ERROR")) return 4;
    return 0;
}

static int bool_of(const char *s, int dflt)
{
    if (!strcasecmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on")) return 1;
    if (!strcasecmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off")) return 0;
    fprintf(stderr, "[WARN] client.conf [client-log]: '%s' is not a boolean (true/false); using %s\n", s,
            dflt ? "true" : "false");
    return dflt;
}

static void load(void)
{
    char paths[2][600], v[600];
    int n = orion_conf_paths(paths);
    static const char *const sections[] = {"log", "client-log"};  /* [client-log] wins */
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 2; k++) {
            const char *p = paths[i], *sec = sections[k];
            if (orion_conf_lookup(p, sec, "log_with_time", v, sizeof v)) cfg.with_time = bool_of(v, cfg.with_time);
            if (orion_conf_lookup(p, sec, "log_to_screen", v, sizeof v)) cfg.to_screen = bool_of(v, cfg.to_screen);
            if (orion_conf_lookup(p, sec, "log_to_file", v, sizeof v)) cfg.to_file = bool_of(v, cfg.to_file);
            if (orion_conf_lookup(p, sec, "log_level", v, sizeof v) && level_of(v)) cfg.screen_level = level_of(v);
            if (orion_conf_lookup(p, sec, "file_log_level", v, sizeof v) && level_of(v)) cfg.file_level = level_of(v);
            if (orion_conf_lookup(p, sec, "log_dir", v, sizeof v) && *v) snprintf(cfg.dir, sizeof cfg.dir, "%s", v);
        }
    const char *env = getenv("ORION_LOG_LEVEL");
    if (env && level_of(env)) cfg.screen_level = level_of(env);
    const char *dir = getenv("ORION_LOG_DIR");
    if (dir && *dir) snprintf(cfg.dir, sizeof cfg.dir, "%s", dir);
    if (!cfg.dir[0]) {
        const char *home = getenv("HOME");
        snprintf(cfg.dir, sizeof cfg.dir, "%s/.orion/log", home && *home ? home : "/tmp");
    }
}

static void stamp(char *out, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm);
}

/* mkdir -p, mode 0700 for what it creates (a user's log directory). */
static int make_dirs(const char *path)
{
    char p[600];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = '\0';
            if (mkdir(p, 0700) && errno != EEXIST) return -1;
            *s = '/';
        }
    return mkdir(p, 0700) && errno != EEXIST ? -1 : 0;
}

/* Per-run files kept in the log directory, the newest (tests/integration/test_native_log_retention.py). */
#define ORION_LOG_KEEP 100

/* client-YYYYmmdd-HHMMSS-PID.log, the name open_file gives */
static int is_run_log(const struct dirent *e)
{
    const char *n = e->d_name;
    size_t len = strlen(n);
    if (len < 28 || strncmp(n, "client-", 7) != 0 || strcmp(n + len - 4, ".log") != 0) return 0;
    for (size_t i = 7; i < len - 4; i++)
        if (i == 15 || i == 22 ? n[i] != '-' : (n[i] < '0' || n[i] > '9')) return 0;
    return 1;
}

/* Remove the oldest run logs beyond ORION_LOG_KEEP (the names sort by time); errors are ignored
 * (another run may be pruning the same files). */
static void prune_old(void)
{
    struct dirent **list;
    int n = scandir(cfg.dir, &list, is_run_log, alphasort);
    if (n < 0) return;
    for (int i = 0; i < n; i++) {
        if (i < n - ORION_LOG_KEEP) {
            char p[sizeof cfg.dir + sizeof list[i]->d_name + 2];
            snprintf(p, sizeof p, "%s/%s", cfg.dir, list[i]->d_name);
            unlink(p);
        }
        free(list[i]);
    }
    free(list);
}

static void open_file(void)
{
    char when[32];
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y%m%d-%H%M%S", &tm);
    snprintf(file_path, sizeof file_path, "%s/client-%s-%d.log", cfg.dir, when, (int)getpid());
    int fd = -1;
    if (make_dirs(cfg.dir) == 0)
        fd = open(file_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640);
    if (fd < 0 || !(file = fdopen(fd, "a"))) {
        if (fd >= 0) close(fd);
        file_failed = 1;
        if (cfg.to_screen)
            fprintf(stderr, "[WARN] client log file %s: %s (set log_dir in [client-log] or ORION_LOG_DIR)\n",
                    file_path, strerror(errno));
        file_path[0] = '\0';
        return;
    }
    prune_old();
}

int orion_log_on_screen(const char *level)
{
    pthread_once(&once, load);
    return cfg.to_screen && level_of(level) >= cfg.screen_level;
}

static void write_line(const char *level, const char *text, int screen)
{
    pthread_once(&once, load);
    int lv = level_of(level);
    char ts[32] = "";
    if (cfg.with_time) stamp(ts, sizeof ts);
    if (screen && cfg.to_screen && lv >= cfg.screen_level) {
        fprintf(stderr, "%s%s[%s] %s\n", ts, ts[0] ? " " : "", level, text);
        fflush(stderr);
    }
    if (!cfg.to_file || lv < cfg.file_level) return;
    pthread_mutex_lock(&file_lock);
    if (!file && !file_failed) open_file();
    if (file) {
        if (!ts[0]) stamp(ts, sizeof ts);
        if (cfg.with_time)
            fprintf(file, "%s [%s] %s\n", ts, level, text);
        else
            fprintf(file, "[%s] %s\n", level, text);
        fflush(file);
    }
    pthread_mutex_unlock(&file_lock);
}

void orion_log_line(const char *level, const char *text)
{
    write_line(level, text, 1);
}

void orion_log_file(const char *level, const char *text)
{
    write_line(level, text, 0);
}

const char *orion_log_path(void)
{
    return file_path;
}
