/* Entry of every memout guest program. The VMM enters _start in 64-bit long mode at CPL3 with
 * RSP at the top of the stack. The header below lets the VMM validate and place the image. */
    .section .memout_header, "a"
    .globl memout_image_header
memout_image_header:
    .ascii "MEMOUTG1"       /* magic */
    .long 1                 /* header version */
    .long 0                 /* flags */
    .quad _start            /* entry point */
    .quad __image_start     /* load address (guest-physical = virtual) */
    .quad __image_end       /* end of the file contents */
    .quad __bss_end         /* end of the memory image, bss included */

    .text
    .globl _start
_start:
    xor %ebp, %ebp
    call guest_main
    mov %eax, %edi
    call rt_exit
1:  jmp 1b
    .section .note.GNU-stack, "", @progbits
