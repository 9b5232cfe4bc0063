/* Error messages are per thread: a failure on one thread is not seen, and
 * not overwritten, by another. */
#include "util.h"

#include <pthread.h>

#define THREADS 8

static pthread_barrier_t bar;

static void *worker(void *arg)
{
    unsigned t = (unsigned)(uintptr_t)arg;
    char path[64];
    snprintf(path, sizeof path, "/nonexistent-cowblk-%u/x", t);
    CHECK(cowblk_last_error()[0] == '\0'); /* a new thread starts clean */
    cowblk_image *img = NULL;
    CHECK(cowblk_open(path, "raw", 0, 0, &img) == -ENOENT);
    /* Everyone fails before anyone looks. */
    pthread_barrier_wait(&bar);
    if (!strstr(cowblk_last_error(), path)) {
        fprintf(stderr, "thread %u sees '%s'\n", t, cowblk_last_error());
        exit(1);
    }
    pthread_barrier_wait(&bar);
    /* Odd threads succeed at something: only their message clears. */
    if (t % 2)
        CHECK(cowblk_close(NULL) == 0);
    pthread_barrier_wait(&bar);
    CHECK((cowblk_last_error()[0] == '\0') == (t % 2 == 1));
    return NULL;
}

int main(void)
{
    pthread_t th[THREADS];
    CHECK(pthread_barrier_init(&bar, NULL, THREADS + 1) == 0);
    CHECK(cowblk_open("/nonexistent-cowblk-main/x", "raw", 0, 0, NULL) == -EINVAL);
    const char *mine = cowblk_last_error();
    char saved[256];
    snprintf(saved, sizeof saved, "%s", mine);
    for (unsigned i = 0; i < THREADS; i++)
        CHECK(pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)i) == 0);
    for (int round = 0; round < 3; round++)
        pthread_barrier_wait(&bar);
    for (unsigned i = 0; i < THREADS; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    /* The main thread's message survived all of that. */
    CHECK(strcmp(cowblk_last_error(), saved) == 0);
    CHECK(strstr(saved, "out is NULL") != NULL);
    printf("main: %s\n", saved);
    return 0;
}
