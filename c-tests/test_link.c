/* Links against the library (shared or static) and checks the versions,
 * the driver list and the NULL no-ops. */
#include "util.h"

int main(void)
{
    CHECK(cowblk_abi_version() == COWBLK_ABI_VERSION);
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", COWBLK_VERSION_MAJOR,
             COWBLK_VERSION_MINOR, COWBLK_VERSION_PATCH);
    CHECK(strcmp(cowblk_version(), want) == 0);
    CHECK(COWBLK_VERSION_NUMBER == COWBLK_VERSION_MAJOR * 10000 +
                                       COWBLK_VERSION_MINOR * 100 +
                                       COWBLK_VERSION_PATCH);

    /* Every table is well formed; add-cow and raw are among them. */
    int seen = 0;
    const cowblk_driver *d;
    for (size_t i = 0; (d = cowblk_driver_get(i)) != NULL; i++) {
        CHECK(d->struct_size == sizeof(cowblk_driver));
        CHECK(d->abi_version == COWBLK_ABI_VERSION);
        CHECK(d->open && d->close && d->readv && d->flush);
        CHECK(cowblk_driver_find(d->format_name) == d);
        if (strcmp(d->format_name, "add-cow") == 0) {
            seen |= 1;
            CHECK(d->writev != NULL && d->change_backing_file != NULL);
        }
        if (strcmp(d->format_name, "raw") == 0) {
            seen |= 2;
            CHECK(d->writev != NULL && d->change_backing_file == NULL);
        }
    }
    CHECK(seen == 3);
    CHECK(cowblk_driver_find("qcow3") == NULL);
    CHECK(strstr(cowblk_last_error(), "qcow3") != NULL);
    CHECK(cowblk_driver_find(NULL) == NULL);
    CHECK(cowblk_last_error()[0] != '\0');

    /* Freeing nothing is a no-op, and a success clears the message. */
    CHECK(cowblk_close(NULL) == 0);
    CHECK(cowblk_last_error()[0] == '\0');
    cowblk_image *none = NULL;
    CHECK(cowblk_close(&none) == 0);
    cowblk_info_free(NULL);
    CHECK(cowblk_capabilities(NULL) == 0);
    printf("cowblk %s, ABI %u\n", cowblk_version(), cowblk_abi_version());
    return 0;
}
