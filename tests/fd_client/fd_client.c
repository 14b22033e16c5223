/* A client of the framed socket in C that passes a memfd with its request (SCM_RIGHTS), as
 * docs/PROTOCOL.md describes. The test builds the request frame (a Predict whose inputs and
 * output name descriptor #0 by fd_index); this program makes the memfd, fills the inputs,
 * sends the frame with the descriptor in one sendmsg(), reads the reply and prints its status
 * and the output the agent wrote into the memfd.
 *
 *   fd_client SOCKET FRAME_FILE   (inputs: floats 1..4 at byte 0, 10..40 at 16; output at 64)
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int fail(const char *what) { perror(what); return 2; }

static int read_exactly(int fd, void *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t got = read(fd, (char *)buf + done, n - done);
        if (got <= 0) return -1;
        done += (size_t)got;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: fd_client SOCKET FRAME_FILE\n"); return 2; }
    FILE *f = fopen(argv[2], "rb");
    if (!f) return fail("frame file");
    static unsigned char frame[65536];
    size_t frame_length = fread(frame, 1, sizeof frame, f);
    fclose(f);

    int memfd = memfd_create("fd-client", MFD_CLOEXEC);
    if (memfd < 0 || ftruncate(memfd, 4096) != 0) return fail("memfd");
    float *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (shared == MAP_FAILED) return fail("mmap");
    for (int i = 0; i < 4; i++) { shared[i] = (float)(i + 1); shared[4 + i] = 10.0f * (i + 1); }

    int sock = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    strncpy(address.sun_path, argv[1], sizeof address.sun_path - 1);
    if (connect(sock, (struct sockaddr *)&address, sizeof address) != 0) return fail("connect");

    struct iovec iov = { frame, frame_length };
    char control[CMSG_SPACE(sizeof(int))];
    memset(control, 0, sizeof control);
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = control, .msg_controllen = sizeof control };
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &memfd, sizeof(int));
    ssize_t sent = sendmsg(sock, &msg, 0);
    if (sent < 0) return fail("sendmsg");
    if ((size_t)sent < frame_length && write(sock, frame + sent, frame_length - sent) < 0)
        return fail("send");

    unsigned char header[16];
    if (read_exactly(sock, header, sizeof header) != 0) return fail("reply header");
    uint16_t status = (uint16_t)(header[6] | header[7] << 8);
    uint32_t length = header[12] | header[13] << 8 | header[14] << 16 | (uint32_t)header[15] << 24;
    char *body = malloc(length + 1);
    if (!body || read_exactly(sock, body, length) != 0) return fail("reply body");
    body[length] = 0;
    printf("status %u\n", status);
    if (status != 0) printf("message %s\n", body);
    printf("output");
    for (int i = 0; i < 4; i++) printf(" %g", shared[16 + i]);  /* byte 64 */
    printf("\n");
    close(sock);
    close(memfd);
    return 0;
}
