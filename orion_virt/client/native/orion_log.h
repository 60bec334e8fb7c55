/* The native client's log lines, as [client-log] of client.conf says (orion_virt/config.py
 * LogConfig): */
#ifndef ORION_LOG_H
#define ORION_LOG_H

/* One line of `level` (DEBUG, INFO, WARN/WARNING, ERROR): on stderr when log_to_screen and the
 * level reaches log_level (ORION_LOG_LEVEL overrides it), "[LEVEL] text", time-stamped when
 * log_with_time; in the process's log file <log_dir>/client-YYYYmmdd-HHMMSS-<pid>.log when
 * log_to_file and the level reaches file_log_level. A file that cannot be written is given up
 * once, with a line on the screen. Thread-safe. */
void orion_log_line(const char *level, const char *text);
/* The same line for the log file only (logged, not printed). */
void orion_log_file(const char *level, const char *text);
/* Whether a line of `level` reaches the screen. */
int orion_log_on_screen(const char *level);
/* The log file's path once it was opened ("" before, or without one). */
const char *orion_log_path(void);

#endif
