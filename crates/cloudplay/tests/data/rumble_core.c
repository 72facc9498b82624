/* A homebrew libretro core that rumbles on A: while port 0 holds RetroPad A, both motors
   of port 0 run (strong at full, weak at half) and the picture is red; otherwise they
   stop and the picture is blue. Built by the rumble test (tests/browser.rs). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define RETRO_API_VERSION 1
#define RETRO_DEVICE_JOYPAD 1
#define RETRO_DEVICE_ID_JOYPAD_A 8
#define RETRO_ENVIRONMENT_GET_RUMBLE_INTERFACE 23
#define RETRO_ENVIRONMENT_SET_PIXEL_FORMAT 10
#define WIDTH 64
#define HEIGHT 48

struct retro_system_info { const char *library_name, *library_version, *valid_extensions; bool need_fullpath, block_extract; };
struct retro_game_geometry { unsigned base_width, base_height, max_width, max_height; float aspect_ratio; };
struct retro_system_timing { double fps, sample_rate; };
struct retro_system_av_info { struct retro_game_geometry geometry; struct retro_system_timing timing; };
struct retro_game_info { const char *path; const void *data; size_t size; const char *meta; };
struct retro_rumble_interface { bool (*set_rumble_state)(unsigned port, unsigned effect, uint16_t strength); };

typedef bool (*environment_t)(unsigned, void *);
typedef void (*video_t)(const void *, unsigned, unsigned, size_t);
typedef void (*audio_sample_t)(int16_t, int16_t);
typedef size_t (*audio_batch_t)(const int16_t *, size_t);
typedef void (*input_poll_t)(void);
typedef int16_t (*input_state_t)(unsigned, unsigned, unsigned, unsigned);

static environment_t environment;
static video_t video;
static audio_batch_t audio_batch;
static input_poll_t input_poll;
static input_state_t input_state;
static struct retro_rumble_interface rumble;
static bool have_rumble, holding;
static uint32_t pixels[WIDTH * HEIGHT];
static int16_t silence[800 * 2];

unsigned retro_api_version(void) { return RETRO_API_VERSION; }
void retro_set_environment(environment_t cb) { environment = cb; }
void retro_set_video_refresh(video_t cb) { video = cb; }
void retro_set_audio_sample(audio_sample_t cb) { (void)cb; }
void retro_set_audio_sample_batch(audio_batch_t cb) { audio_batch = cb; }
void retro_set_input_poll(input_poll_t cb) { input_poll = cb; }
void retro_set_input_state(input_state_t cb) { input_state = cb; }
void retro_init(void) {}
void retro_deinit(void) {}
void retro_get_system_info(struct retro_system_info *info) {
  memset(info, 0, sizeof *info);
  info->library_name = "rumble";
  info->library_version = "1";
  info->valid_extensions = "bin";
  info->need_fullpath = true;
}
void retro_get_system_av_info(struct retro_system_av_info *info) {
  memset(info, 0, sizeof *info);
  info->geometry.base_width = info->geometry.max_width = WIDTH;
  info->geometry.base_height = info->geometry.max_height = HEIGHT;
  info->geometry.aspect_ratio = (float)WIDTH / HEIGHT;
  info->timing.fps = 60.0;
  info->timing.sample_rate = 48000.0;
}
void retro_set_controller_port_device(unsigned port, unsigned device) { (void)port; (void)device; }
void retro_reset(void) {}
void retro_run(void) {
  input_poll();
  bool a = input_state(0, RETRO_DEVICE_JOYPAD, 0, RETRO_DEVICE_ID_JOYPAD_A) != 0;
  if (a != holding && have_rumble) {
    rumble.set_rumble_state(0, 0, a ? 0xffff : 0);
    rumble.set_rumble_state(0, 1, a ? 0x8000 : 0);
  }
  holding = a;
  for (int i = 0; i < WIDTH * HEIGHT; i++) pixels[i] = a ? 0x00ff0000 : 0x000000ff;
  video(pixels, WIDTH, HEIGHT, WIDTH * 4);
  audio_batch(silence, 800);
}
size_t retro_serialize_size(void) { return 1; }
bool retro_serialize(void *data, size_t size) { if (size < 1) return false; *(uint8_t *)data = holding; return true; }
bool retro_unserialize(const void *data, size_t size) { if (size < 1) return false; holding = *(const uint8_t *)data; return true; }
void retro_cheat_reset(void) {}
void retro_cheat_set(unsigned index, bool enabled, const char *code) { (void)index; (void)enabled; (void)code; }
bool retro_load_game(const struct retro_game_info *game) {
  (void)game;
  unsigned format = 1; /* XRGB8888 */
  environment(RETRO_ENVIRONMENT_SET_PIXEL_FORMAT, &format);
  have_rumble = environment(RETRO_ENVIRONMENT_GET_RUMBLE_INTERFACE, &rumble);
  return true;
}
bool retro_load_game_special(unsigned type, const struct retro_game_info *info, size_t num) { (void)type; (void)info; (void)num; return false; }
void retro_unload_game(void) {}
unsigned retro_get_region(void) { return 0; }
void *retro_get_memory_data(unsigned id) { (void)id; return NULL; }
size_t retro_get_memory_size(unsigned id) { (void)id; return 0; }
