/* dlopen_check.c: BLCR's dlopen test. cr_init must not be reachable globally (not even under
 * cr_run or cr_run --omit, whose stubs export no API), and dlopen("libcr.so.0") must give a
 * working cr_init through the handle.
 * Build: gcc -O2 -Wall -o dlopen_check dlopen_check.c -ldl -Wl,-rpath,$LIBDIR
 */
#include <dlfcn.h>
#include <stdio.h>

int main(void) {
    if (dlsym(RTLD_DEFAULT, "cr_init") != NULL) {
        printf("FAIL dlopen_check: cr_init is globally visible before dlopen\n");
        return 1;
    }
    void *h = dlopen("libcr.so.0", RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        printf("FAIL dlopen_check: dlopen(libcr.so.0): %s\n", dlerror());
        return 1;
    }
    int (*init)(void) = (int (*)(void))dlsym(h, "cr_init");
    if (init == NULL) {
        printf("FAIL dlopen_check: cr_init not in libcr.so.0\n");
        return 1;
    }
    int id = init();
    if (id < 0) {
        printf("FAIL dlopen_check: cr_init() = %d\n", id);
        return 1;
    }
    if (dlsym(RTLD_DEFAULT, "cr_init") != NULL) {
        printf("FAIL dlopen_check: cr_init became globally visible\n");
        return 1;
    }
    printf("PASS dlopen_check\n");
    return 0;
}
